//! The batch-norm passes on plain slices: per-channel batch statistics ([`batch_stats`]), the
//! normalisation with its optional shortcut and ReLU ([`normalize`]) and the backward pass
//! ([`backward`]), over inputs laid out as [`Planes`]. `ops::batchnorm` wraps them in Candle
//! ops; nothing here knows Candle.
//!
//! Per-channel sums walk the planes in memory order in fixed chunks of images whose sums are
//! added in image order, so the results do not depend on the thread count or on scheduling.

use std::mem::MaybeUninit;
use std::sync::Arc;

use rayon::prelude::*;

use super::lanes;

/// The shape of a batch-norm input: N images of C planes of `plane` = H·W values; channel `c`
/// is the N planes at plane indices `c, C + c, 2C + c, …`.
#[derive(Debug, Clone, Copy)]
pub struct Planes {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

impl Planes {
    /// Values per channel.
    pub fn count(&self) -> usize {
        self.n * self.plane
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.plane
    }
    /// Per channel, the sum over every image of `f(i, c)` for plane i = image·C + c.
    ///
    /// The planes are walked in memory order, a fixed number of images per task, and the
    /// tasks' sums added in image order, so the result does not depend on the thread count.
    /// (Walking one channel's planes, a plane apart, ran the passes ~3× slower than the
    /// element-wise ones: a prefetcher stops at each 4 KiB page, and planes are 1 KiB or less
    /// in the later stages.)
    fn channel_sums(&self, f: impl Fn(usize, usize) -> (f64, f64) + Sync) -> Vec<(f64, f64)> {
        const IMAGES: usize = 8;
        let parts: Vec<Vec<(f64, f64)>> = (0..self.n.div_ceil(IMAGES))
            .into_par_iter()
            .map(|k| {
                let mut part = vec![(0.0, 0.0); self.c];
                for img in k * IMAGES..((k + 1) * IMAGES).min(self.n) {
                    for (c, p) in part.iter_mut().enumerate() {
                        let (u, v) = f(img * self.c + c, c);
                        p.0 += u;
                        p.1 += v;
                    }
                }
                part
            })
            .collect();
        let mut total = vec![(0.0, 0.0); self.c];
        for part in &parts {
            for (t, p) in total.iter_mut().zip(part) {
                t.0 += p.0;
                t.1 += p.1;
            }
        }
        total
    }

    /// Plane `i` (image·C + channel) of `data`.
    fn plane<'a>(&self, data: &'a [f32], i: usize) -> &'a [f32] {
        &data[i * self.plane..(i + 1) * self.plane]
    }

    /// Planes per rayon task in element-wise passes: below `PARALLEL_MIN` values, threads cost
    /// more than they save.
    fn min_planes(&self) -> usize {
        (PARALLEL_MIN / self.plane.max(1)).max(1)
    }
}

const PARALLEL_MIN: usize = 1 << 15;

/// Per-channel batch mean and biased variance of `x` in one pass: the sums of
/// (x − k) and (x − k)² with k the mean of the channel's first plane, which is close enough to
/// the channel's mean that the variance loses nothing to cancellation..
pub fn batch_stats(x: &[f32], g: Planes) -> Vec<(f64, f64)> {
    let count = g.count() as f64;
    // k: the mean of each channel's first plane
    let shift: Vec<f32> = (0..g.c)
        .map(|c| (lanes::shifted_sums(g.plane(x, c), 0.0).0 / g.plane as f64) as f32)
        .collect();
    let sums = g.channel_sums(|i, c| lanes::shifted_sums(g.plane(x, i), shift[c]));
    sums.iter()
        .zip(&shift)
        .map(|(&(s1, s2), &k)| {
            let d = s1 / count;
            (k as f64 + d, (s2 / count - d * d).max(0.0))
        })
        .collect()
}

/// y = relu?(γ·(x − μ)·invstd + β (+ s)) per channel, with `s` a tensor of x's shape added
/// before the ReLU (a residual unit's shortcut); every value of y is written once.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    relu: bool,
    add: Option<&[f32]>,
    g: Planes,
) -> Vec<f32> {
    let len = g.len();
    let mut y: Vec<f32> = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(g.plane)
        .with_min_len(g.min_planes())
        .zip(x.par_chunks(g.plane))
        .enumerate()
        .for_each(|(p, (y, x))| {
            let c = p % g.c;
            let scale = gamma[c] * invstd[c];
            let shift = beta[c] - mean[c] * scale;
            match add {
                Some(s) => lanes::scale_shift_add(y, x, &s[p * g.plane..][..g.plane], scale, shift, relu),
                None => lanes::scale_shift(y, x, scale, shift, relu),
            }
        });
    // SAFETY: the planes cover all `len` values and scale_shift wrote every one
    unsafe { y.set_len(len) };
    y
}

/// A batch norm as its forward pass ran: what the backward pass needs.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub planes: Planes,
    pub mean: Arc<Vec<f32>>,
    pub invstd: Arc<Vec<f32>>,
    pub relu: bool,
    /// Whether μ and invstd came from x itself (train mode), so that dx goes through them too.
    pub batch_stats: bool,
}

/// The gradient of the batch norm `f` as `[dx | dγ | dβ]`, followed by the masked incoming
/// gradient (`grad` where `y > 0`) when `keep_masked` and `f` has a ReLU. With g the incoming
/// gradient masked by y > 0 under ReLU and x̂ = (x − μ)·invstd, per channel: dβ = Σ g,
/// dγ = Σ g·x̂, and dx = γ·invstd·(g − dβ/N − x̂·dγ/N) when μ and invstd are the batch's (they
/// depend on x), dx = γ·invstd·g otherwise. N is the values per channel.
pub fn backward(f: &Normalized, gamma: &[f32], grad: &[f32], x: &[f32], y: &[f32], keep_masked: bool) -> Vec<f32> {
    let g = f.planes;
    let relu = f.relu;
    let keep_masked = keep_masked && relu;
    // Per channel: (Σ g, Σ g·(x − μ)), each in a fixed order.
    let sums = g.channel_sums(|i, c| lanes::grad_sums(g.plane(grad, i), g.plane(x, i), g.plane(y, i), f.mean[c], relu));
    let count = g.count() as f64;
    let len = g.len();
    let total = len + 2 * g.c + if keep_masked { len } else { 0 };
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let (dx, rest) = out.spare_capacity_mut()[..total].split_at_mut(len);
    let (dgb, masked) = rest.split_at_mut(2 * g.c);
    // dx = a·g + b·(x − μ) + k per channel; b and k vanish in eval mode.
    let coeffs: Vec<(f32, f32, f32)> = sums
        .iter()
        .enumerate()
        .map(|(c, &(sg, sgx))| {
            let invstd = f.invstd[c] as f64;
            let a = gamma[c] as f64 * invstd;
            let dgamma = sgx * invstd;
            dgb[c].write(dgamma as f32);
            dgb[g.c + c].write(sg as f32);
            if f.batch_stats {
                let b = -a * invstd * dgamma / count;
                let k = -a * sg / count;
                (a as f32, b as f32, k as f32)
            } else {
                (a as f32, 0.0, 0.0)
            }
        })
        .collect();
    let planes = dx
        .par_chunks_mut(g.plane)
        .zip(
            grad.par_chunks(g.plane)
                .zip(x.par_chunks(g.plane))
                .zip(y.par_chunks(g.plane)),
        )
        .enumerate();
    let dx_plane = |p: usize, dx: &mut [MaybeUninit<f32>], gp: &[f32], xp: &[f32], yp: &[f32]| {
        let c = p % g.c;
        let (a, b, k) = coeffs[c];
        lanes::grad_input(dx, gp, xp, yp, a, b, k - b * f.mean[c], relu);
    };
    if keep_masked {
        // the masked gradient from the same planes while they are in cache
        planes
            .zip(masked.par_chunks_mut(g.plane))
            .with_min_len(g.min_planes())
            .for_each(|((p, (dx, ((gp, xp), yp))), m)| {
                dx_plane(p, dx, gp, xp, yp);
                lanes::relu_grad(m, gp, yp);
            });
    } else {
        planes
            .with_min_len(g.min_planes())
            .for_each(|(p, (dx, ((gp, xp), yp)))| dx_plane(p, dx, gp, xp, yp));
    }
    // SAFETY: dx's planes, the 2·C values of dγ, dβ and (when kept) the masked planes were all
    // written above
    unsafe { out.set_len(total) };
    out
}
