//! Spatial batch normalisation with an optional ReLU, `y = relu?(γ·(x − μ)·σ⁻¹ + β)`, fused
//! into one pass forward and one op backward on the CPU.
//!
//! Candle's `candle_nn::BatchNorm` is a dozen small autograd ops (transpose, means, broadcasts),
//! each a full pass over the activations forward and again backward; at CIFAR sizes that cost
//! more than the convolutions. Here, in train mode, one parallel pass over channels computes the
//! batch mean and variance (and updates the running statistics), one custom op writes `y`, and
//! its gradient is one more custom op that is not differentiated further.
//!
//! Layout: `x` is (N, C, H, W), contiguous f32; the passes over it are
//! [`cpu::batchnorm`](crate::nn::cpu::batchnorm)'s. Anything else (another device, dtype or
//! layout) goes through [`batch_norm_slow`].

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, Var};

use super::common::{f32_data, reference_ops};
use crate::nn::cpu::batchnorm::{backward, batch_stats, normalize, Normalized, Planes};

/// PyTorch's defaults for `BatchNorm2d`.
pub const EPS: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

/// `relu?(batch_norm(x))` with γ = `weight`, β = `bias`. In train mode `x` is normalised with
/// its own per-channel mean and biased variance, and the running statistics move towards the
/// batch's (`r ← (1 − momentum)·r + momentum·s`, with the unbiased variance, as PyTorch does);
/// in eval mode the running statistics normalise and are left alone.
pub fn batch_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Var,
    running_var: &Var,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    for (name, t) in [
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean.as_tensor()),
        ("running_var", running_var.as_tensor()),
    ] {
        if t.dims() != [c] {
            candle_core::bail!(
                "batch_norm: {name} has shape {:?}, input {:?} has {c} channels",
                t.dims(),
                x.dims()
            );
        }
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda()
        && !reference_ops()
        && [x, weight, bias].iter().all(|t| t.dtype() == DType::F32)
        && [running_mean, running_var].iter().all(|v| v.dtype() == DType::F32)
    {
        let planes = Planes { n, c, plane: h * w };
        return cuda::batch_norm(x, weight, bias, running_mean, running_var, train, relu, planes);
    }
    let fusable = x.device().is_cpu()
        && [x, weight, bias]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.is_contiguous())
        && [running_mean, running_var].iter().all(|v| v.dtype() == DType::F32);
    if !fusable || reference_ops() {
        return batch_norm_slow(x, weight, bias, running_mean, running_var, train, relu);
    }
    let planes = Planes { n, c, plane: h * w };
    let (mean, invstd) = if train {
        if planes.count() < 2 {
            candle_core::bail!(
                "batch_norm: train mode needs more than one value per channel, input {:?}",
                x.dims()
            );
        }
        let stats = x.apply_op1_no_bwd(&BatchStats(planes))?.to_vec1::<f64>()?;
        let (mean, var) = stats.split_at(c);
        update_running(running_mean, running_var, mean, var, planes.count())?;
        (
            mean.iter().map(|&m| m as f32).collect(),
            var.iter().map(|&v| (1.0 / (v + EPS).sqrt()) as f32).collect(),
        )
    } else {
        let mean = running_mean.as_tensor().to_vec1::<f32>()?;
        let var = running_var.as_tensor().to_vec1::<f32>()?;
        let invstd = var.iter().map(|&v| (1.0 / (v as f64 + EPS).sqrt()) as f32).collect();
        (mean, invstd)
    };
    let op = BatchNorm(Normalized {
        planes,
        mean: Arc::new(mean),
        invstd: Arc::new(invstd),
        relu,
        batch_stats: train,
    });
    x.apply_op3(weight, bias, op)
}

/// Eval-mode batch norm as y = scale·x + shift per channel: scale = γ/√(var + ε) and
/// shift = β − mean·scale from the running statistics (computed in f64 on the CPU; on a GPU
/// in f32 on the device, so that an evaluation batch never waits for the host).
pub fn eval_scale_shift(
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Var,
    running_var: &Var,
) -> Result<(Tensor, Tensor)> {
    if !weight.device().is_cpu() {
        let scale = (weight / (running_var.as_tensor().detach() + EPS)?.sqrt()?)?;
        let shift = (bias - (running_mean.as_tensor().detach() * &scale)?)?;
        return Ok((scale, shift));
    }
    let [g, b, m, v] = [weight, bias, running_mean.as_tensor(), running_var.as_tensor()]
        .map(|t| t.to_dtype(DType::F64).and_then(|t| t.to_vec1::<f64>()));
    let (g, b, m, v) = (g?, b?, m?, v?);
    let scale: Vec<f64> = g.iter().zip(&v).map(|(g, v)| g / (v + EPS).sqrt()).collect();
    let shift: Vec<f64> = b.iter().zip(&m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    let dev = weight.device();
    let as_f32 = |v: Vec<f64>| Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), v.len(), dev);
    Ok((
        as_f32(scale)?.to_dtype(weight.dtype())?,
        as_f32(shift)?.to_dtype(weight.dtype())?,
    ))
}

/// [`batch_norm`] built from Candle's own `BatchNorm` and plain ops: the reference the fused op
/// is tested against, and the path for devices, dtypes and layouts the fused op does not take.
pub fn batch_norm_slow(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Var,
    running_var: &Var,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    // `Var::from_tensor` on a variable shares its storage, so Candle's update lands in ours.
    let bn = candle_nn::BatchNorm::new_with_momentum(
        c,
        running_mean.as_tensor().clone(),
        running_var.as_tensor().clone(),
        weight.clone(),
        bias.clone(),
        EPS,
        MOMENTUM,
    )?;
    let y = candle_core::ModuleT::forward_t(&bn, x, train)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// Moves the running statistics towards the batch's `mean` and biased `var` over `count`
/// values per channel: `r ← (1 − momentum)·r + momentum·s`, with the unbiased variance.
pub fn update_running(running_mean: &Var, running_var: &Var, mean: &[f64], var: &[f64], count: usize) -> Result<()> {
    let unbias = count as f64 / (count as f64 - 1.0);
    let rm = running_mean.as_tensor().to_vec1::<f32>()?;
    let rv = running_var.as_tensor().to_vec1::<f32>()?;
    let new_rm: Vec<f32> = rm
        .iter()
        .zip(mean)
        .map(|(&r, &m)| ((1.0 - MOMENTUM) * r as f64 + MOMENTUM * m) as f32)
        .collect();
    let new_rv: Vec<f32> = rv
        .iter()
        .zip(var)
        .map(|(&r, &v)| ((1.0 - MOMENTUM) * r as f64 + MOMENTUM * v * unbias) as f32)
        .collect();
    let device = running_mean.device();
    running_mean.set(&Tensor::from_vec(new_rm, mean.len(), device)?)?;
    running_var.set(&Tensor::from_vec(new_rv, var.len(), device)?)
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    f32_data(s, l, "batch_norm")
}

/// Per-channel batch mean and biased variance of `x`, as f64 `[mean (C) | var (C)]`, in one
/// pass: the sums of (x − k) and (x − k)² with k the mean of the channel's first plane, which
/// is close enough to the channel's mean that the variance loses nothing to cancellation.
struct BatchStats(Planes);

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "batch-norm-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous(s, l)?;
        if x.len() != g.len() {
            candle_core::bail!("batch_norm: input has {} values, expected {}", x.len(), g.len());
        }
        let stats = batch_stats(x, g);
        let mut out: Vec<f64> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from(2 * g.c)))
    }
}

/// The forward op on (x, γ, β): y = relu?(γ·(x − μ)·invstd + β), with μ and invstd per channel
/// (the batch's in train mode, the running statistics' in eval mode).
#[derive(Debug, Clone)]
struct BatchNorm(Normalized);

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "batch-norm"
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
        let f = &self.0;
        let g = f.planes;
        let (x, gamma, beta) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        if x.len() != g.len() || gamma.len() != g.c || beta.len() != g.c {
            candle_core::bail!("batch_norm: inputs do not match {g:?}");
        }
        let y = normalize(x, gamma, beta, &f.mean, &f.invstd, f.relu, None, g);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = BatchNormBackward {
            fwd: self.0.clone(),
            gamma: Arc::new(gamma.to_vec1::<f32>()?),
            keep_masked: false,
        };
        let d = grad.contiguous()?.apply_op3_no_bwd(x, &res.contiguous()?, &back)?;
        let (len, c) = (self.0.planes.len(), self.0.planes.c);
        let dx = d.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = d.narrow(0, len, c)?;
        let dbeta = d.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The backward op of a batch norm on (grad, x, y), writing `[dx | dγ | dβ]` into one buffer
/// (see [`backward`]).
pub struct BatchNormBackward {
    pub fwd: Normalized,
    pub gamma: Arc<Vec<f32>>,
    /// Also write the masked incoming gradient after dβ (see [`backward`]).
    pub keep_masked: bool,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "batch-norm-backward"
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
        let f = &self.fwd;
        let g = f.planes;
        let (grad, x, y) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        if grad.len() != g.len() || x.len() != g.len() || y.len() != g.len() {
            candle_core::bail!("batch_norm backward: inputs do not match {g:?}");
        }
        let out = backward(f, &self.gamma, grad, x, y, self.keep_masked);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The same op on a CUDA device: [`crate::nn::cuda::batchnorm`]'s kernels. The statistics stay
/// on the device (the running ones are updated there too), so a training step never waits for
/// the host here.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, Var};

    use super::{Planes, EPS, MOMENTUM};
    use crate::nn::cuda::{batchnorm as gpu, f32_view};

    #[allow(clippy::too_many_arguments)]
    pub(super) fn batch_norm(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Var,
        running_var: &Var,
        train: bool,
        relu: bool,
        planes: Planes,
    ) -> Result<Tensor> {
        let x = x.contiguous()?;
        let c = planes.c;
        let stats = if train {
            let count = planes.count();
            if count < 2 {
                candle_core::bail!(
                    "batch_norm: train mode needs more than one value per channel, input {:?}",
                    x.dims()
                );
            }
            // [mean | var | running mean | running var], the running ones already moved: one
            // kernel, then two copies into the variables
            let s = x.apply_op3_no_bwd(running_mean.as_tensor(), running_var.as_tensor(), &Stats(planes))?;
            running_mean.set(&s.narrow(0, 2 * c, c)?)?;
            running_var.set(&s.narrow(0, 3 * c, c)?)?;
            s.narrow(0, 0, 2 * c)?
        } else {
            Tensor::cat(
                &[running_mean.as_tensor().detach(), running_var.as_tensor().detach()],
                0,
            )?
        };
        let params = Tensor::cat(&[&stats, weight, bias], 0)?;
        x.apply_op2(&params, Normalize { planes, relu, train })
    }

    fn on_cpu(op: &str) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{op}: the CUDA op was given CPU tensors")
    }

    /// (x, running mean, running variance) → `[mean | biased variance | running mean | running
    /// variance]` per channel, the running ones moved towards the batch's.
    struct Stats(Planes);

    impl CustomOp3 for Stats {
        fn name(&self) -> &'static str {
            "batch-norm-stats-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            on_cpu(self.name())
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let view = |s, l| f32_view(s, l, "batch_norm");
            let running = (&view(s2, l2)?, &view(s3, l3)?);
            let out = gpu::stats(&s1.device, &self.0, &view(s1, l1)?, running, MOMENTUM)?;
            Ok((
                CudaStorage::wrap_cuda_slice(out, s1.device.clone()),
                Shape::from(4 * self.0.c),
            ))
        }
    }

    /// (x, `[mean | var | γ | β]`) → y; its backward is [`NormalizeBackward`].
    #[derive(Clone, Copy)]
    struct Normalize {
        planes: Planes,
        relu: bool,
        /// The statistics are the batch's: their share of the gradient goes into dx.
        train: bool,
    }

    impl CustomOp2 for Normalize {
        fn name(&self) -> &'static str {
            "batch-norm-cuda"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            on_cpu(self.name())
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (x, p) = (f32_view(s1, l1, "batch_norm")?, f32_view(s2, l2, "batch_norm")?);
            let y = gpu::forward(&s1.device, &self.planes, &x, &p, EPS as f32, self.relu)?;
            Ok((CudaStorage::wrap_cuda_slice(y, s1.device.clone()), l1.shape().clone()))
        }

        fn bwd(
            &self,
            x: &Tensor,
            params: &Tensor,
            _y: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let d = dy
                .contiguous()?
                .apply_op3_no_bwd(x, params, &NormalizeBackward(*self))?;
            let len = self.planes.len();
            let dx = d.narrow(0, 0, len)?.reshape(x.shape())?;
            let dparams = d.narrow(0, len, 4 * self.planes.c)?;
            Ok((Some(dx), Some(dparams)))
        }
    }

    /// (dy, x, params) → `[dx | 0 | 0 | dγ | dβ]`.
    struct NormalizeBackward(Normalize);

    impl CustomOp3 for NormalizeBackward {
        fn name(&self) -> &'static str {
            "batch-norm-backward-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            on_cpu(self.name())
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let f = &self.0;
            let view = |s, l| f32_view(s, l, "batch_norm backward");
            let (dy, x, p) = (view(s1, l1)?, view(s2, l2)?, view(s3, l3)?);
            let out = gpu::backward(&s1.device, &f.planes, &dy, &x, &p, EPS as f32, f.relu, f.train)?;
            let len = out.len();
            Ok((CudaStorage::wrap_cuda_slice(out, s1.device.clone()), Shape::from(len)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1) (a small LCG, so the tests need no seed
    /// plumbing), shifted by `offset` to give the mean something to do.
    fn data(len: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * scale + offset
            })
            .collect()
    }

    struct Case {
        x: Var,
        gamma: Var,
        beta: Var,
        rm: Var,
        rv: Var,
        r: Tensor,
    }

    fn case(dims: (usize, usize, usize, usize), seed: u64) -> Case {
        let dev = Device::Cpu;
        let (n, c, h, w) = dims;
        let len = n * c * h * w;
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        Case {
            x: Var::from_tensor(&t(data(len, seed, 2.0, 0.5), &[n, c, h, w])).unwrap(),
            gamma: Var::from_tensor(&t(data(c, seed + 1, 0.5, 1.0), &[c])).unwrap(),
            beta: Var::from_tensor(&t(data(c, seed + 2, 0.5, 0.0), &[c])).unwrap(),
            rm: Var::from_tensor(&t(data(c, seed + 3, 0.2, 0.0), &[c])).unwrap(),
            rv: Var::from_tensor(&t(data(c, seed + 4, 0.2, 1.0), &[c])).unwrap(),
            r: t(data(len, seed + 5, 1.0, 0.0), &[n, c, h, w]),
        }
    }

    type Bn = fn(&Tensor, &Tensor, &Tensor, &Var, &Var, bool, bool) -> Result<Tensor>;

    /// y, dx, dγ, dβ, running mean and running var after one call of `f` on a fresh copy of `k`.
    fn run(f: Bn, k: &Case, train: bool, relu: bool) -> Vec<Vec<f32>> {
        let rm = Var::from_tensor(&k.rm.as_tensor().copy().unwrap()).unwrap();
        let rv = Var::from_tensor(&k.rv.as_tensor().copy().unwrap()).unwrap();
        let y = f(
            k.x.as_tensor(),
            k.gamma.as_tensor(),
            k.beta.as_tensor(),
            &rm,
            &rv,
            train,
            relu,
        )
        .unwrap();
        let grads = (&y * &k.r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let grad = |v: &Var| flat(grads.get(v.as_tensor()).expect("gradient"));
        vec![
            flat(&y),
            grad(&k.x),
            grad(&k.gamma),
            grad(&k.beta),
            flat(rm.as_tensor()),
            flat(rv.as_tensor()),
        ]
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: fused {x} vs slow {y} (scale {scale})"
            );
        }
    }

    const NAMES: [&str; 6] = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"];

    #[test]
    fn fused_matches_candle_values_and_gradients() {
        for (s, dims) in [(2, 3, 5, 7), (8, 16, 32, 32), (4, 64, 8, 8)].into_iter().enumerate() {
            let k = case(dims, 10 * s as u64);
            for train in [true, false] {
                for relu in [false, true] {
                    let fast = run(batch_norm, &k, train, relu);
                    let slow = run(batch_norm_slow, &k, train, relu);
                    for ((name, a), b) in NAMES.iter().zip(&fast).zip(&slow) {
                        assert_close(&format!("{dims:?} train={train} relu={relu} {name}"), a, b);
                    }
                    if relu {
                        // The mask matters: some outputs are clipped, so this case tests it.
                        assert!(fast[0].contains(&0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn running_statistics_follow_pytorch() {
        let (n, c, h, w) = (3, 4, 5, 6);
        let k = case((n, c, h, w), 7);
        let out = run(batch_norm, &k, true, false);
        let x = k.x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rm0 = k.rm.as_tensor().to_vec1::<f32>().unwrap();
        let rv0 = k.rv.as_tensor().to_vec1::<f32>().unwrap();
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..h * w).map(move |j| (i, j)))
                .map(|(i, j)| x[(i * c + ch) * h * w + j] as f64)
                .collect();
            let count = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / count;
            let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0);
            let want_rm = 0.9 * rm0[ch] as f64 + 0.1 * mean;
            let want_rv = 0.9 * rv0[ch] as f64 + 0.1 * unbiased;
            assert!((out[4][ch] as f64 - want_rm).abs() < 1e-6, "running_mean[{ch}]");
            assert!((out[5][ch] as f64 - want_rv).abs() < 1e-6, "running_var[{ch}]");
        }
        // Eval mode leaves the running statistics alone.
        let eval = run(batch_norm, &k, false, true);
        assert_eq!(eval[4], rm0);
        assert_eq!(eval[5], rv0);
    }

    #[test]
    fn repeated_runs_are_bit_identical() {
        let k = case((8, 16, 32, 32), 3);
        for train in [true, false] {
            assert_eq!(run(batch_norm, &k, train, true), run(batch_norm, &k, train, true));
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // 20 images: three chunks of the per-channel sums, the last one short
        let k = case((20, 6, 7, 5), 9);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run(batch_norm, &k, true, true))
        };
        let one = on(1);
        for threads in [2, 3] {
            assert_eq!(on(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn train_needs_more_than_one_value_per_channel() {
        let k = case((1, 2, 1, 1), 1);
        let r = batch_norm(
            k.x.as_tensor(),
            k.gamma.as_tensor(),
            k.beta.as_tensor(),
            &k.rm,
            &k.rv,
            true,
            false,
        );
        assert!(r.is_err());
    }

    #[test]
    fn non_contiguous_input_takes_the_slow_path() {
        let k = case((2, 3, 4, 5), 4);
        let xt = k.x.as_tensor().transpose(2, 3).unwrap();
        let fast = batch_norm(&xt, k.gamma.as_tensor(), k.beta.as_tensor(), &k.rm, &k.rv, false, true).unwrap();
        let xc = xt.contiguous().unwrap();
        let want = batch_norm(&xc, k.gamma.as_tensor(), k.beta.as_tensor(), &k.rm, &k.rv, false, true).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close("transposed", &flat(&fast), &flat(&want));
    }
}
