//! Batch normalisation (+ReLU) on a CUDA device: the kernels of `src/nn/kernels/batchnorm.cu`,
//! whose header says what each computes, the layout and the launch shape. Three launches
//! forward in train mode (two for the statistics and the running statistics' update, one for
//! the normalisation) and three
//! backward (two for dγ and dβ, one for dx); the sums are deterministic.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

use super::{grid_stride, int, Kernels, BLOCK};
use crate::nn::cpu::batchnorm::Planes;

static KERNELS: Kernels = Kernels::new("runner_batchnorm", include_str!("../kernels/batchnorm.cu"));

/// The reductions' blocks aim at this many in all: a few per multiprocessor of a large GPU
/// (132 on an H100), so that even 16 channels keep it busy.
const REDUCE_BLOCKS: usize = 512;

/// The kernels' size arguments.
struct Dims {
    n: i32,
    c: i32,
    hw: i32,
    /// Parts per channel of the reductions: (C, S) blocks.
    s: i32,
    total: i64,
}

fn dims(p: &Planes) -> Result<Dims> {
    let s = (REDUCE_BLOCKS / p.c.max(1)).clamp(1, p.n.max(1));
    let total = p.len();
    Ok(Dims {
        n: int(p.n, "batch_norm")?,
        c: int(p.c, "batch_norm")?,
        hw: int(p.plane, "batch_norm")?,
        s: int(s, "batch_norm")?,
        total: i64::try_from(total)
            .map_err(|_| candle_core::Error::Msg(format!("batch_norm: {total} values too many")))?,
    })
}

/// (C, S) blocks of [`BLOCK`] threads, as the `*_partial` kernels assume.
fn reduce(d: &Dims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.c as u32, d.s as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The lengths against `p` (see [`super::check_lens`]).
fn check(p: &Planes, lens: &[(&str, usize, usize)]) -> Result<()> {
    super::check_lens("batch_norm (CUDA)", p, lens)
}

/// `[mean | biased variance | running mean | running variance]` (4C): `x`'s per channel, and
/// the running statistics `rm`, `rv` moved towards them by `momentum` (unbiased variance).
pub fn stats(
    dev: &CudaDevice,
    p: &Planes,
    x: &CudaView<'_, f32>,
    (rm, rv): (&CudaView<'_, f32>, &CudaView<'_, f32>),
    momentum: f64,
) -> Result<CudaSlice<f32>> {
    check(
        p,
        &[
            ("input", x.len(), p.len()),
            ("running mean", rm.len(), p.c),
            ("running variance", rv.len(), p.c),
        ],
    )?;
    let d = dims(p)?;
    let stream = dev.cuda_stream();
    // SAFETY: each (channel, part) block writes its own two partial sums; the finish kernel
    // writes every channel's mean and variance.
    let mut part = unsafe { dev.alloc::<f64>(p.c * d.s as usize * 2)? };
    let mut out = unsafe { dev.alloc::<f32>(4 * p.c)? };
    let f = KERNELS.func(dev, "bn_stats_partial")?;
    let mut a = stream.launch_builder(&f);
    a.arg(x).arg(&mut part).arg(&d.n).arg(&d.c).arg(&d.hw).arg(&d.s);
    // SAFETY: the arguments match bn_stats_partial's signature; sizes checked above.
    unsafe { a.launch(reduce(&d)) }.w()?;
    let f = KERNELS.func(dev, "bn_stats_finish")?;
    let mut a = stream.launch_builder(&f);
    a.arg(x).arg(&part).arg(rm).arg(rv).arg(&mut out);
    a.arg(&d.n).arg(&d.c).arg(&d.hw).arg(&d.s).arg(&momentum);
    // SAFETY: as above, for bn_stats_finish.
    unsafe { a.launch(grid_stride(p.c)) }.w()?;
    Ok(out)
}

/// `y = relu?(γ·(x − mean)·invstd + β)`, `params` = `[mean | var | γ | β]` (4C).
pub fn forward(
    dev: &CudaDevice,
    p: &Planes,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    eps: f32,
    relu: bool,
) -> Result<CudaSlice<f32>> {
    check(p, &[("input", x.len(), p.len()), ("parameters", params.len(), 4 * p.c)])?;
    let d = dims(p)?;
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<f32>(p.len())? };
    let f = KERNELS.func(dev, "bn_forward")?;
    let stream = dev.cuda_stream();
    let mut a = stream.launch_builder(&f);
    let relu = i32::from(relu);
    a.arg(&mut y)
        .arg(x)
        .arg(params)
        .arg(&d.total)
        .arg(&d.c)
        .arg(&d.hw)
        .arg(&eps)
        .arg(&relu);
    // SAFETY: the arguments match bn_forward's signature; sizes checked above.
    unsafe { a.launch(grid_stride(p.len())) }.w()?;
    Ok(y)
}

/// `[dx | 0 | 0 | dγ | dβ]` (N·C·HW + 4C) from the output's gradient `dy`, the input `x` and
/// the forward's `params`; `train`: the statistics were the batch's (their share of the
/// gradient goes into dx), not the running ones.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &CudaDevice,
    p: &Planes,
    dy: &CudaView<'_, f32>,
    x: &CudaView<'_, f32>,
    params: &CudaView<'_, f32>,
    eps: f32,
    relu: bool,
    train: bool,
) -> Result<CudaSlice<f32>> {
    check(
        p,
        &[
            ("output gradient", dy.len(), p.len()),
            ("input", x.len(), p.len()),
            ("parameters", params.len(), 4 * p.c),
        ],
    )?;
    let d = dims(p)?;
    let stream = dev.cuda_stream();
    let (relu, train) = (i32::from(relu), i32::from(train));
    // SAFETY: the partial sums are written by their blocks, dp by the finish kernel, dx by the
    // element-wise kernel: every element before it is read.
    let mut part = unsafe { dev.alloc::<f64>(p.c * d.s as usize * 2)? };
    let mut out = unsafe { dev.alloc::<f32>(p.len() + 4 * p.c)? };
    let (mut dx, mut dp) = out.split_at_mut(p.len());

    let f = KERNELS.func(dev, "bn_grad_partial")?;
    let mut a = stream.launch_builder(&f);
    a.arg(dy)
        .arg(x)
        .arg(params)
        .arg(&mut part)
        .arg(&d.n)
        .arg(&d.c)
        .arg(&d.hw)
        .arg(&d.s)
        .arg(&eps)
        .arg(&relu);
    // SAFETY: the arguments match bn_grad_partial's signature; sizes checked above.
    unsafe { a.launch(reduce(&d)) }.w()?;

    let f = KERNELS.func(dev, "bn_grad_finish")?;
    let mut a = stream.launch_builder(&f);
    a.arg(&part).arg(&mut dp).arg(&d.c).arg(&d.s);
    // SAFETY: as above, for bn_grad_finish.
    unsafe { a.launch(grid_stride(p.c)) }.w()?;

    let m = p.count() as f32;
    let f = KERNELS.func(dev, "bn_backward_dx")?;
    let mut a = stream.launch_builder(&f);
    a.arg(&mut dx).arg(dy).arg(x).arg(params).arg(&mut dp);
    a.arg(&d.total)
        .arg(&d.c)
        .arg(&d.hw)
        .arg(&m)
        .arg(&eps)
        .arg(&relu)
        .arg(&train);
    // SAFETY: as above, for bn_backward_dx.
    unsafe { a.launch(grid_stride(p.len())) }.w()?;
    Ok(out)
}
