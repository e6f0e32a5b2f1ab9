//! A residual unit's addition of its two paths, `out = relu?(branch + S(x))`, where no other
//! op does it: units whose identity shortcut is added inside their last conv → BN op (see
//! [`crate::nn::Unit`]) never come here; option A, a projection's output and every unit the
//! fused conv → BN ops do not take do.
//!
//! `S` is the identity, or He et al.'s option A where the shape changes: `x` subsampled with
//! stride 2 and its channels zero-padded (half the new channels before, half after, as the
//! common CIFAR ResNet code does), with no parameters.
//!
//! Here: the public op and its `*_slow` oracle, the Candle ops (the CPU passes are
//! [`cpu::residual`](crate::nn::cpu::residual)'s) and, with the `cuda` feature, the CUDA
//! kernels of `src/nn/kernels/residual.cu`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::common::{f32_data, reference_ops};
pub use crate::nn::cpu::residual::Addend;
use crate::nn::cpu::residual::{self as cpu, ResidualShape};

/// `relu?(branch + S(x))`, in one pass forward and one pass backward.
///
/// The fused op takes contiguous f32 tensors on the CPU or (with the `cuda` feature) a CUDA
/// device. Anything else (another device, dtype or layout) goes through [`residual_slow`], which
/// gives the same values: a strided view would need its own index maths in every kernel for a case
/// the models never produce (conv and batch-norm outputs are contiguous), so falling back beats
/// an error.
pub fn residual(branch: &Tensor, x: &Tensor, shortcut: Addend, relu: bool) -> Result<Tensor> {
    let (n, c_out, h_out, w_out) = branch.dims4()?;
    let (nx, c_in, h, w) = x.dims4()?;
    let fits = nx == n
        && match shortcut {
            Addend::Identity => (c_in, h, w) == (c_out, h_out, w_out),
            Addend::SubsamplePad => c_in <= c_out && (h.div_ceil(2), w.div_ceil(2)) == (h_out, w_out),
        };
    if !fits {
        candle_core::bail!(
            "residual: shortcut input {:?} does not fit branch {:?} ({shortcut:?})",
            x.dims(),
            branch.dims()
        );
    }
    if crate::nn::trace::active() {
        return crate::nn::trace::output(branch.dims(), 1);
    }
    let fusable = (branch.device().is_cpu() || branch.device().is_cuda())
        && branch.device().same_device(x.device())
        && branch.dtype() == DType::F32
        && x.dtype() == DType::F32
        && branch.is_contiguous()
        && x.is_contiguous();
    if !fusable || reference_ops() {
        return residual_slow(branch, x, shortcut, relu);
    }
    let geom = ResidualShape {
        n,
        c_out,
        h_out,
        w_out,
        c_in,
        h,
        w,
    };
    branch.apply_op2(x, Residual { shortcut, relu, geom })
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    f32_data(s, l, "residual")
}

/// The forward op: out = relu?(branch + S(x)).
#[derive(Debug, Clone, Copy)]
struct Residual {
    shortcut: Addend,
    relu: bool,
    geom: ResidualShape,
}

impl CustomOp2 for Residual {
    fn name(&self) -> &'static str {
        "residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, x) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let g = self.geom;
        let out = cpu::forward(g, self.shortcut, self.relu, b, x);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.h_out, g.w_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.geom;
        let out = cuda::forward(self, s1, l1, s2, l2)?;
        Ok((out, Shape::from((g.n, g.c_out, g.h_out, g.w_out))))
    }

    fn bwd(
        &self,
        branch: &Tensor,
        x: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        if self.shortcut == Addend::Identity && !self.relu {
            // Both gradients are the incoming one: no pass at all, as for a plain add.
            return Ok((Some(grad.clone()), Some(grad)));
        }
        let d = grad.apply_op2_no_bwd(&out.contiguous()?, &ResidualBackward(*self))?;
        let nb = branch.elem_count();
        let d_branch = d.narrow(0, 0, nb)?.reshape(branch.shape())?;
        let d_x = match self.shortcut {
            // Tensors are immutable, so one buffer can serve as both gradients.
            Addend::Identity => d_branch.clone(),
            Addend::SubsamplePad => d.narrow(0, nb, x.elem_count())?.reshape(x.shape())?,
        };
        Ok((Some(d_branch), Some(d_x)))
    }
}

/// The backward op of a [`Residual`], one pass: from (grad, out) it writes [d_branch | d_x]
/// into one buffer (see [`cpu::backward`]).
struct ResidualBackward(Residual);

#[cfg(feature = "cuda")]
impl Residual {
    /// The length of the d_x part of the backward buffer.
    fn d_x_len(&self) -> usize {
        self.geom.d_x_len(self.shortcut)
    }
}

impl CustomOp2 for ResidualBackward {
    fn name(&self) -> &'static str {
        "residual-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (grad, out) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let Residual { shortcut, relu, geom } = self.0;
        let buf = cpu::backward(geom, shortcut, relu, grad, out);
        let len = buf.len();
        Ok((CpuStorage::F32(buf), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = self.0.geom;
        let buf = cuda::backward(&self.0, s1, l1, s2, l2)?;
        Ok((buf, Shape::from(g.n * g.out_image() + self.0.d_x_len())))
    }
}

/// The CUDA side of the fused op: the kernels of `src/nn/kernels/residual.cu` (see
/// [`Kernels`](crate::nn::cuda::Kernels)), launched on Candle's own stream, so they are ordered
/// with every other op on the device without extra synchronisation.
#[cfg(feature = "cuda")]
mod cuda {
    use super::{Addend, Residual, ResidualShape};
    use crate::nn::cuda::{f32_view, grid_stride, int, Kernels};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
    use candle_core::{Layout, Result};

    static KERNELS: Kernels = Kernels::new("runner_residual", include_str!("../kernels/residual.cu"));

    /// The kernels' names: [forward, backward] × [identity_vec4, identity, option_a].
    const NAMES: [[&str; 3]; 2] = [
        [
            "residual_fwd_identity_vec4",
            "residual_fwd_identity",
            "residual_fwd_option_a",
        ],
        [
            "residual_bwd_identity_vec4",
            "residual_bwd_identity",
            "residual_bwd_option_a",
        ],
    ];

    fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
        f32_view(s, l, "residual")
    }

    /// float4 loads need every pointer 16-byte aligned and whole groups of four.
    fn vec4_fits(dev: &CudaDevice, total: usize, views: &[&CudaView<'_, f32>]) -> bool {
        let stream = dev.cuda_stream();
        total.is_multiple_of(4)
            && views.iter().all(|v| {
                let (ptr, _record) = v.device_ptr(&stream);
                ptr.is_multiple_of(16)
            })
    }

    /// The kernels' int arguments: c_out, h_out, w_out, c_in, h, w.
    fn dims(g: &ResidualShape) -> Result<[i32; 6]> {
        let mut out = [0; 6];
        for (o, v) in out.iter_mut().zip([g.c_out, g.h_out, g.w_out, g.c_in, g.h, g.w]) {
            *o = int(v, "residual")?;
        }
        Ok(out)
    }

    fn count(v: usize) -> Result<i64> {
        i64::try_from(v).map_err(|_| candle_core::Error::Msg(format!("residual: {v} elements too many")))
    }

    /// One launch of `residual_{fwd | bwd}_{identity[_vec4] | option_a}(dst, a, b, total, [dims,] relu)`:
    /// the forward (dst = out; a, b = branch, x) and the backward (dst = [d_branch | d_x];
    /// a, b = grad, out) take the same arguments. `total` is the output's element count.
    fn launch(
        dev: &CudaDevice,
        backward: bool,
        op: &Residual,
        total: usize,
        dst: &mut CudaSlice<f32>,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
    ) -> Result<()> {
        let relu = i32::from(op.relu);
        let (kernel, items) = match op.shortcut {
            Addend::Identity if vec4_fits(dev, total, &[a, b, &dst.slice(..)]) => (0, total / 4),
            Addend::Identity => (1, total),
            Addend::SubsamplePad => (2, total),
        };
        let f = KERNELS.func(dev, NAMES[usize::from(backward)][kernel])?;
        let n = count(items)?;
        let dims = match op.shortcut {
            Addend::SubsamplePad => dims(&op.geom)?,
            Addend::Identity => [0; 6],
        };
        // Candle's own stream: ordered after the ops that produced the inputs.
        let stream = dev.cuda_stream();
        let mut args = stream.launch_builder(&f);
        args.arg(dst).arg(a).arg(b).arg(&n);
        if op.shortcut == Addend::SubsamplePad {
            for v in &dims {
                args.arg(v);
            }
        }
        args.arg(&relu);
        // SAFETY: the argument list matches the kernel's signature (src/nn/kernels/residual.cu), and
        // `residual` checked the sizes: dst holds the output (forward) or d_branch then d_x.
        unsafe { args.launch(grid_stride(items)) }.w()?;
        Ok(())
    }

    /// out = relu?(branch + S(x)), one launch.
    pub(super) fn forward(
        op: &Residual,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let (branch, x) = (view(s1, l1)?, view(s2, l2)?);
        let g = op.geom;
        let total = g.n * g.out_image();
        // SAFETY: every element is written by the kernel below before anyone reads it.
        let mut out = unsafe { dev.alloc::<f32>(total)? };
        launch(dev, false, op, total, &mut out, &branch, &x)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }

    /// [d_branch | d_x] from (grad, out), one launch (d_branch alone for the identity).
    pub(super) fn backward(
        op: &Residual,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &s1.device;
        let (grad, out) = (view(s1, l1)?, view(s2, l2)?);
        let g = op.geom;
        let total = g.n * g.out_image();
        // SAFETY: the kernels write all of d_branch and all of d_x (option A: every x position
        // belongs to exactly one output element's 2×2 block).
        let mut d = unsafe { dev.alloc::<f32>(total + op.d_x_len())? };
        launch(dev, true, op, total, &mut d, &grad, &out)?;
        Ok(CudaStorage::wrap_cuda_slice(d, dev.clone()))
    }
}

/// The same, from plain Candle ops: the reference that fused versions are tested against.
pub fn residual_slow(branch: &Tensor, x: &Tensor, shortcut: Addend, relu: bool) -> Result<Tensor> {
    let s = match shortcut {
        Addend::Identity => x.clone(),
        Addend::SubsamplePad => subsample_pad(x, branch.dim(1)?)?,
    };
    if s.dims() != branch.dims() {
        candle_core::bail!(
            "residual: shortcut shape {:?} differs from branch shape {:?}",
            s.dims(),
            branch.dims()
        );
    }
    let out = (branch + s)?;
    if relu {
        out.relu()
    } else {
        Ok(out)
    }
}

/// `x[:, :, ::2, ::2]` zero-padded from C to `c_out` channels ((c_out−C)/2 before, the rest after).
fn subsample_pad(x: &Tensor, c_out: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if c_out < c {
        candle_core::bail!("option A shortcut cannot reduce channels ({c} → {c_out})");
    }
    // Pad odd sizes by one so the reshape trick applies; the padded row/column is never picked.
    let x = if h % 2 == 1 {
        x.pad_with_zeros(2, 0, 1)?
    } else {
        x.clone()
    };
    let x = if w % 2 == 1 { x.pad_with_zeros(3, 0, 1)? } else { x };
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let sub = x
        .reshape((n, c, h2, 2, w2, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, h2, w2))?;
    let before = (c_out - c) / 2;
    sub.pad_with_zeros(1, before, c_out - c - before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and both gradients of fused vs slow, for a random loss weighting.
    fn compare(b_shape: (usize, usize, usize, usize), x_shape: (usize, usize, usize, usize), sc: Addend, relu: bool) {
        let dev = Device::Cpu;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., b_shape, &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., x_shape, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1., b_shape, &dev).unwrap();
        let run = |f: fn(&Tensor, &Tensor, Addend, bool) -> Result<Tensor>| {
            let y = f(b.as_tensor(), x.as_tensor(), sc, relu).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                v(&y),
                v(grads.get(b.as_tensor()).unwrap()),
                v(grads.get(x.as_tensor()).unwrap()),
            )
        };
        let (fast, slow) = (run(residual), run(residual_slow));
        for (what, a, e) in [
            ("out", &fast.0, &slow.0),
            ("d_branch", &fast.1, &slow.1),
            ("d_x", &fast.2, &slow.2),
        ] {
            assert_eq!(a.len(), e.len());
            let worst = a.iter().zip(e.iter()).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-6, "{what} {b_shape:?} {sc:?} relu={relu}: max error {worst}");
        }
    }

    #[test]
    fn fused_equals_slow_on_every_cifar_stage_shape() {
        for relu in [false, true] {
            compare((2, 16, 32, 32), (2, 16, 32, 32), Addend::Identity, relu);
            compare((2, 32, 16, 16), (2, 32, 16, 16), Addend::Identity, relu);
            compare((2, 64, 8, 8), (2, 64, 8, 8), Addend::Identity, relu);
            compare((2, 32, 16, 16), (2, 16, 32, 32), Addend::SubsamplePad, relu);
            compare((2, 64, 8, 8), (2, 32, 16, 16), Addend::SubsamplePad, relu);
            // a batch big enough to take the parallel path
            compare((8, 32, 16, 16), (8, 16, 32, 32), Addend::SubsamplePad, relu);
        }
    }

    #[test]
    fn fused_handles_odd_sizes_and_batch_one() {
        compare((1, 6, 4, 3), (1, 3, 7, 5), Addend::SubsamplePad, true);
        compare((1, 5, 7, 5), (1, 5, 7, 5), Addend::Identity, true);
        compare((3, 7, 4, 4), (3, 4, 8, 8), Addend::SubsamplePad, false);
    }

    /// The fused backward against central differences of the fused forward, for the loss
    /// L = Σ out · r summed in f64. Inputs are nudged away from ReLU's kink so that the function is
    /// linear within ±EPS of them and the difference quotient is exact up to f32 rounding of `out`.
    fn gradient_check(b_shape: (usize, usize, usize, usize), x_shape: (usize, usize, usize, usize), sc: Addend) {
        const EPS: f32 = 1e-2;
        let dev = Device::Cpu;
        let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for relu in [false, true] {
            let x = Tensor::randn(0f32, 1., x_shape, &dev).unwrap();
            let pre = residual_slow(&Tensor::zeros(b_shape, DType::F32, &dev).unwrap(), &x, sc, false).unwrap();
            let mut b = vec(&Tensor::randn(0f32, 1., b_shape, &dev).unwrap());
            for (b, s) in b.iter_mut().zip(vec(&pre)) {
                if (*b + s).abs() < 4.0 * EPS {
                    *b += 8.0 * EPS;
                }
            }
            let x = vec(&x);
            let r = vec(&Tensor::randn(0f32, 1., b_shape, &dev).unwrap());
            let loss = |b: &[f32], x: &[f32]| -> f64 {
                let b = Tensor::from_slice(b, b_shape, &dev).unwrap();
                let x = Tensor::from_slice(x, x_shape, &dev).unwrap();
                let y = vec(&residual(&b, &x, sc, relu).unwrap());
                y.iter().zip(&r).map(|(y, r)| f64::from(*y) * f64::from(*r)).sum()
            };
            let bv = Var::from_slice(&b, b_shape, &dev).unwrap();
            let xv = Var::from_slice(&x, x_shape, &dev).unwrap();
            let rt = Tensor::from_slice(&r, b_shape, &dev).unwrap();
            let y = residual(bv.as_tensor(), xv.as_tensor(), sc, relu).unwrap();
            let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();
            let d_b = vec(grads.get(bv.as_tensor()).unwrap());
            let d_x = vec(grads.get(xv.as_tensor()).unwrap());
            let mut worst = 0f64;
            for (of_b, analytic) in [(true, &d_b), (false, &d_x)] {
                for (i, d) in analytic.iter().enumerate() {
                    let at = |delta: f32| {
                        let (mut b, mut x) = (b.clone(), x.clone());
                        if of_b {
                            b[i] += delta;
                        } else {
                            x[i] += delta;
                        }
                        loss(&b, &x)
                    };
                    let numeric = (at(EPS) - at(-EPS)) / (2.0 * f64::from(EPS));
                    worst = worst.max((numeric - f64::from(*d)).abs());
                }
            }
            assert!(
                worst < 1e-3,
                "{b_shape:?} {sc:?} relu={relu}: max |numeric - analytic| {worst}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        gradient_check((2, 3, 3, 4), (2, 3, 3, 4), Addend::Identity);
        gradient_check((2, 4, 3, 3), (2, 2, 5, 5), Addend::SubsamplePad);
        // odd padding split (1 before, 2 after) and an even/odd spatial mix
        gradient_check((1, 5, 2, 2), (1, 2, 4, 3), Addend::SubsamplePad);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let b = Tensor::zeros((1, 8, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 8, 5, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(residual(&b, &x, Addend::Identity, false).is_err());
        let x = Tensor::zeros((1, 16, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(
            residual(&b, &x, Addend::SubsamplePad, false).is_err(),
            "option A cannot drop channels"
        );
    }

    #[test]
    fn option_a_subsamples_and_pads_symmetrically() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 16., &Device::Cpu)?.reshape((1, 2, 4, 4))?;
        let branch = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        let y = residual_slow(&branch, &x, Addend::SubsamplePad, false)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        // channel 0 and 3 are padding; channel 1 is x[0] at (0,0),(0,2),(2,0),(2,2)
        assert_eq!(&v[0..4], &[0., 0., 0., 0.]);
        assert_eq!(&v[4..8], &[0., 2., 8., 10.]);
        assert_eq!(&v[8..12], &[16., 18., 24., 26.]);
        assert_eq!(&v[12..16], &[0., 0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn option_a_handles_odd_sizes() -> Result<()> {
        let x = Tensor::ones((2, 3, 7, 5), candle_core::DType::F32, &Device::Cpu)?;
        let branch = Tensor::zeros((2, 6, 4, 3), candle_core::DType::F32, &Device::Cpu)?;
        let y = residual_slow(&branch, &x, Addend::SubsamplePad, true)?;
        assert_eq!(y.dims(), &[2, 6, 4, 3]);
        assert_eq!(y.sum_all()?.to_scalar::<f32>()?, (2 * 3 * 4 * 3) as f32);
        Ok(())
    }
}
