//! The lane-masked tap-list forward kernel (`FwdKernel::Masked` for AVX2 and AVX-512), written
//! once over [`Simd`]: a register tile of P pixel vectors × OT output channels, walking a
//! [`Job`]'s taps with each tap's lane masks switching off the pixels whose neighbour lies
//! outside the plane, so padding costs neither a branch nor a padded copy. Tiles are
//! const-generic so every index is a constant and LLVM keeps the accumulators in registers.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use super::geom::CENTRE;
use super::job::Job;
use super::simd::Simd;

/// One image × one tile of OT output channels of a [`Job`]: tiles of 3 and 2 pixel vectors as
/// [`Simd::tile_split`] says (a lone 1-vector tile has too few independent accumulators to
/// hide the FMA latency), then one of 1 for what is left.
///
/// # Safety
/// As for [`Simd`]'s methods; `out` must be valid for writes of this unit's planes.
#[inline(always)]
pub unsafe fn fwd_unit<S: Simd, const OT: usize>(job: &Job, img: usize, tile: usize, out: *mut f32) {
    debug_assert_eq!(job.out_tile, OT);
    // the masks are kept for 16-pixel vectors
    let nv = job.masks.nv * (16 / S::LANES);
    let nvalid = (job.nout - tile * OT).min(OT);
    let src = job.src.as_ptr().add(img * job.src_img);
    let wp = job.wp.as_ptr().add(tile * job.taps.len() * job.nin * OT);
    let at = img * job.out_img + tile * OT * job.out_ch;
    let out = (out.add(at), job.add.map(|a| a.as_ptr().add(at)));
    let (threes, twos) = S::tile_split(nv);
    let ch0 = tile * OT;
    let mut v = 0;
    for _ in 0..threes {
        S::fwd_tile::<3, OT>(job, src, wp, v, out, ch0, nvalid);
        v += 3;
    }
    for _ in 0..twos {
        S::fwd_tile::<2, OT>(job, src, wp, v, out, ch0, nvalid);
        v += 2;
    }
    if v < nv {
        S::fwd_tile::<1, OT>(job, src, wp, v, out, ch0, nvalid);
    }
}

/// P pixel vectors from vector `v0` × OT output channels from `ch0`, over every tap and input
/// channel; the bias, the added values and the ReLU as the lanes inside the plane are stored.
/// Each instruction set runs it through [`Simd::fwd_tile`], a `#[target_feature]` function of
/// its own, so that LLVM optimises each tile alone (keeping its accumulators in registers)
/// before inlining it into `fwd_unit`.
///
/// # Safety
/// As for [`Simd`]'s methods; the tile's planes of `out` must be valid for writes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fwd_tile<S: Simd, const P: usize, const OT: usize>(
    job: &Job,
    src: *const f32,
    wp: *const f32,
    v0: usize,
    (out, add): (*mut f32, Option<*const f32>),
    ch0: usize,
    nvalid: usize,
) {
    let mut acc = [[S::zero(); P]; OT];
    let q0 = (v0 * S::LANES) as isize - job.masks.shift as isize;
    let (nin, sch) = (job.nin, job.src_ch);
    for (j, tap) in job.taps.iter().enumerate() {
        let mut m = [S::no_lanes(); P];
        for p in 0..P {
            m[p] = S::mask(job.masks, tap.kind, v0 + p);
        }
        let mut xp = src.wrapping_offset(tap.off + q0);
        let mut wj = wp.add(j * nin * OT);
        for _ in 0..nin {
            let mut xs = [S::zero(); P];
            for p in 0..P {
                xs[p] = S::load_masked(m[p], xp.wrapping_add(p * S::LANES));
            }
            for c in 0..OT {
                let wv = S::splat(*wj.add(c));
                for p in 0..P {
                    acc[c][p] = S::fmadd(xs[p], wv, acc[c][p]);
                }
            }
            wj = wj.add(OT);
            xp = xp.wrapping_add(sch);
        }
    }
    for p in 0..P {
        let sm = S::mask(job.masks, CENTRE, v0 + p);
        for c in 0..nvalid {
            let at = (c * job.out_ch) as isize + q0 + (p * S::LANES) as isize;
            let mut v = acc[c][p];
            if let Some(b) = job.bias {
                v = S::add(v, S::splat(b[ch0 + c]));
            }
            if let Some(a) = add {
                v = S::add(v, S::load_masked(sm, a.wrapping_offset(at)));
            }
            if job.relu {
                v = S::max(v, S::zero());
            }
            S::store_masked(out.wrapping_offset(at), sm, v);
        }
    }
}
