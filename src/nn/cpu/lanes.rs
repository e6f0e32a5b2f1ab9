//! The element-wise loops of the batch-norm and residual ops, written so that the compiler
//! vectorises them:
//! chunks of [`W`] values with `[f32; W]` accumulators (no bounds checks, no closures in the
//! inner loop), compiled once for AVX-512, once for AVX2 and once for the build's baseline,
//! and picked at run time.
//!
//! Results do not depend on which version runs: each sum adds the same values in the same
//! order in f32 lanes, the lanes of a block are added in a fixed order into an f64 total, and
//! Rust never fuses a multiply and an add unless asked to.

use std::mem::MaybeUninit;

/// Lanes per chunk: one AVX-512 register, two AVX2 ones.
pub const W: usize = 16;
/// Values summed in f32 lanes before they go into the f64 total.
const BLOCK: usize = 1024;

/// Defines `pub fn $name` that runs `$body` compiled for the best instruction set this CPU has.
macro_rules! multiversion {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features the function was compiled for
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Σ f(j) lane by lane over j in 0..n, in order. One sum per loop: with two sums in one
/// loop, LLVM pairs the two sums' lane i into a two-lane vector instead of keeping each sum
/// in whole registers (scalar loads, shuffles and stack spills on AVX2).
#[inline(always)]
fn lane_sums(n: usize, f: impl Fn(usize) -> [f32; W]) -> [f32; W] {
    let mut acc = [0.0f32; W];
    for j in 0..n {
        let v = f(j);
        for i in 0..W {
            acc[i] += v[i];
        }
    }
    acc
}

/// Adds a block's lanes (and its tail) into an f64 total, in a fixed order.
#[inline(always)]
fn fold(lanes: &[f32; W], tail: f32) -> f64 {
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

multiversion! {
    /// (Σ (x − k), Σ (x − k)²) over `x`. With `k` near the mean the second sum loses nothing
    /// to cancellation, so one pass gives the variance.
    pub fn shifted_sums(x: &[f32], k: f32) -> (f64, f64) {
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for block in x.chunks(BLOCK) {
            let (chunks, rest) = block.as_chunks::<W>();
            let a = lane_sums(chunks.len(), |j| std::array::from_fn(|i| chunks[j][i] - k));
            let b = lane_sums(chunks.len(), |j| {
                std::array::from_fn(|i| (chunks[j][i] - k) * (chunks[j][i] - k))
            });
            let (mut ta, mut tb) = (0.0f32, 0.0f32);
            for &v in rest {
                let d = v - k;
                ta += d;
                tb += d * d;
            }
            s1 += fold(&a, ta);
            s2 += fold(&b, tb);
        }
        (s1, s2)
    }
}

multiversion! {
    /// y = x·scale + shift, clipped at 0 when `relu`; every value of `y` is written.
    pub fn scale_shift(y: &mut [MaybeUninit<f32>], x: &[f32], scale: f32, shift: f32, relu: bool) {
        if relu {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write((x * scale + shift).max(0.0));
            }
        } else {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(x * scale + shift);
            }
        }
    }
}

multiversion! {
    /// y = x·scale + shift + s, clipped at 0 when `relu`; every value of `y` is written.
    pub fn scale_shift_add(y: &mut [MaybeUninit<f32>], x: &[f32], s: &[f32], scale: f32, shift: f32, relu: bool) {
        if relu {
            for ((y, &x), &s) in y.iter_mut().zip(x).zip(s) {
                y.write((x * scale + shift + s).max(0.0));
            }
        } else {
            for ((y, &x), &s) in y.iter_mut().zip(x).zip(s) {
                y.write(x * scale + shift + s);
            }
        }
    }
}

/// The incoming gradient where the ReLU passed it (`y > 0`), or as it is without a ReLU.
#[inline(always)]
fn masked(g: f32, y: f32, relu: bool) -> f32 {
    if !relu || y > 0.0 {
        g
    } else {
        0.0
    }
}

multiversion! {
    /// (Σ g, Σ g·(x − m)) with g the gradient masked by `y > 0` when `relu`.
    pub fn grad_sums(g: &[f32], x: &[f32], y: &[f32], m: f32, relu: bool) -> (f64, f64) {
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for ((gb, xb), yb) in g.chunks(BLOCK).zip(x.chunks(BLOCK)).zip(y.chunks(BLOCK)) {
            let ((gc, gr), (xc, xr), (yc, yr)) = (gb.as_chunks::<W>(), xb.as_chunks::<W>(), yb.as_chunks::<W>());
            let n = gc.len().min(xc.len()).min(yc.len());
            let gm = |j: usize, i: usize| masked(gc[j][i], yc[j][i], relu);
            let a = lane_sums(n, |j| std::array::from_fn(|i| gm(j, i)));
            let b = lane_sums(n, |j| std::array::from_fn(|i| gm(j, i) * (xc[j][i] - m)));
            let (mut ta, mut tb) = (0.0f32, 0.0f32);
            for ((&gv, &xv), &yv) in gr.iter().zip(xr).zip(yr) {
                let gm = masked(gv, yv, relu);
                ta += gm;
                tb += gm * (xv - m);
            }
            s1 += fold(&a, ta);
            s2 += fold(&b, tb);
        }
        (s1, s2)
    }
}

multiversion! {
    /// dx = a·g + b·x + k, with g masked by `y > 0` when `relu`; every value of `dx` is written.
    pub fn grad_input(dx: &mut [MaybeUninit<f32>], g: &[f32], x: &[f32], y: &[f32], a: f32, b: f32, k: f32, relu: bool) {
        for (((d, &g), &x), &y) in dx.iter_mut().zip(g).zip(x).zip(y) {
            d.write(a * masked(g, y, relu) + b * x + k);
        }
    }
}

multiversion! {
    /// out = b + x, clipped at 0 when `relu`; every value of `out` is written.
    pub fn sum_relu(out: &mut [MaybeUninit<f32>], b: &[f32], x: &[f32], relu: bool) {
        if relu {
            for ((o, &b), &x) in out.iter_mut().zip(b).zip(x) {
                o.write((b + x).max(0.0));
            }
        } else {
            for ((o, &b), &x) in out.iter_mut().zip(b).zip(x) {
                o.write(b + x);
            }
        }
    }
}

multiversion! {
    /// d = g where `out > 0`, 0 elsewhere (the gradient through a ReLU from its output).
    pub fn relu_grad(d: &mut [MaybeUninit<f32>], g: &[f32], out: &[f32]) {
        for ((d, &g), &o) in d.iter_mut().zip(g).zip(out) {
            d.write(masked(g, o, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 113) as f32 / 37.0 - 1.3).collect()
    }

    #[test]
    fn shifted_sums_match_a_plain_loop_for_any_length() {
        for n in [0, 1, 15, 16, 17, 1023, 1024, 1025, 3000] {
            let x = values(n);
            let (s1, s2) = shifted_sums(&x, 0.25);
            let e1: f64 = x.iter().map(|&v| (v - 0.25) as f64).sum();
            let e2: f64 = x.iter().map(|&v| ((v - 0.25) as f64).powi(2)).sum();
            assert!((s1 - e1).abs() < 1e-3, "n={n}: {s1} vs {e1}");
            assert!((s2 - e2).abs() < 1e-3 * e2.max(1.0), "n={n}: {s2} vs {e2}");
        }
    }

    #[test]
    fn grad_loops_follow_their_formulas() {
        let n = 1041;
        let (g, x) = (values(n), values(n + 5)[5..].to_vec());
        let y: Vec<f32> = values(n + 11)[11..].to_vec();
        for relu in [false, true] {
            let gm: Vec<f64> = g
                .iter()
                .zip(&y)
                .map(|(&g, &y)| if relu && y <= 0.0 { 0.0 } else { g as f64 })
                .collect();
            let (s1, s2) = grad_sums(&g, &x, &y, 0.5, relu);
            let e1: f64 = gm.iter().sum();
            let e2: f64 = gm.iter().zip(&x).map(|(g, &x)| g * (x as f64 - 0.5)).sum();
            assert!((s1 - e1).abs() < 1e-3 && (s2 - e2).abs() < 1e-3, "relu={relu}");
            let mut dx: Vec<f32> = Vec::with_capacity(n);
            grad_input(&mut dx.spare_capacity_mut()[..n], &g, &x, &y, 2.0, -0.5, 0.25, relu);
            // SAFETY: grad_input wrote all n values
            unsafe { dx.set_len(n) };
            for i in 0..n {
                let want = 2.0 * gm[i] - 0.5 * x[i] as f64 + 0.25;
                assert!((dx[i] as f64 - want).abs() < 1e-5, "dx[{i}] relu={relu}");
            }
            if relu {
                assert!(gm.contains(&0.0) && gm.iter().any(|&v| v != 0.0));
            }
        }
    }
}
