//! AVX-512 (F + VL) kernels: 16 pixels of one channel plane per register, masked loads for the taps
//! that reach past the plane's edge (masked-off lanes are neither read nor faulted on).
//!
//! Register budget (32 zmm): the forward tile is 3 pixel vectors × 8 output channels = 24
//! accumulators, 3 input vectors and 1 broadcast weight; the weight-gradient tile is 4 output
//! × 2 input channels × 3 taps = 24 accumulators (4 × 6 × 1 for 1×1 kernels), 4 output-gradient
//! vectors and 1 input vector. Tiles are const-generic so every index is a constant and LLVM
//! keeps the accumulators in registers. VL matters although every vector is 512 bits: without
//! it the 128/256-bit shuffles of a horizontal sum can only name zmm0–15, so LLVM confined the
//! weight-gradient accumulators there and spilled a third of them.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "x86_64"))]
pub(super) use super::scalar::{dw_images, fwd_unit};

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dw_images, fwd_unit};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::{DwJob, Job, KTap, CENTRE};

    /// Output channels per forward tile: the packing width of `Job::wp`.
    const OT: usize = 8;

    /// One image × one tile of 8 output channels of a [`Job`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; `out` must be valid for writes of this unit's planes.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(in super::super) unsafe fn fwd_unit(job: &Job, img: usize, tile: usize, out: *mut f32) {
        debug_assert_eq!(job.out_tile, OT);
        let nv = job.masks.nv;
        let nvalid = (job.nout - tile * OT).min(OT);
        let src = job.src.as_ptr().add(img * job.src_img);
        let wp = job.wp.as_ptr().add(tile * job.taps.len() * job.nin * OT);
        let out = out.add(img * job.out_img + tile * OT * job.out_ch);
        // tiles of 3 vectors, and of 2 for the remainder (a lone 1-vector tile has too few
        // independent accumulators to hide the FMA latency)
        let (threes, twos) = match nv % 3 {
            _ if nv < 2 => (0, 0),
            0 => (nv / 3, 0),
            1 => ((nv - 4) / 3, 2),
            _ => ((nv - 2) / 3, 1),
        };
        let mut v = 0;
        for _ in 0..threes {
            fwd_tile::<3>(job, src, wp, v, out, nvalid);
            v += 3;
        }
        for _ in 0..twos {
            fwd_tile::<2>(job, src, wp, v, out, nvalid);
            v += 2;
        }
        if v < nv {
            fwd_tile::<1>(job, src, wp, v, out, nvalid);
        }
    }

    /// P pixel vectors from vector `v0` × 8 output channels, over every tap and input channel.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn fwd_tile<const P: usize>(
        job: &Job,
        src: *const f32,
        wp: *const f32,
        v0: usize,
        out: *mut f32,
        nvalid: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); P]; OT];
        let q0 = (v0 * 16) as isize - job.masks.shift as isize;
        let (nin, sch) = (job.nin, job.src_ch);
        for (j, tap) in job.taps.iter().enumerate() {
            let mut m = [0u16; P];
            for p in 0..P {
                m[p] = job.masks.get(tap.kind, v0 + p);
            }
            let mut xp = src.wrapping_offset(tap.off + q0);
            let mut wj = wp.add(j * nin * OT);
            for _ in 0..nin {
                let mut xs = [_mm512_setzero_ps(); P];
                for p in 0..P {
                    xs[p] = _mm512_maskz_loadu_ps(m[p], xp.wrapping_add(p * 16));
                }
                for c in 0..OT {
                    let wv = _mm512_set1_ps(*wj.add(c));
                    for p in 0..P {
                        acc[c][p] = _mm512_fmadd_ps(xs[p], wv, acc[c][p]);
                    }
                }
                wj = wj.add(OT);
                xp = xp.wrapping_add(sch);
            }
        }
        for p in 0..P {
            let sm = job.masks.get(CENTRE, v0 + p);
            for c in 0..nvalid {
                let o = out.wrapping_offset((c * job.out_ch) as isize + q0 + (p * 16) as isize);
                _mm512_mask_storeu_ps(o, sm, acc[c][p]);
            }
        }
    }

    /// Adds the weight gradient of images `imgs` to `part` ([out][in][tap]).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; the job's slices must hold every image in `imgs`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(in super::super) unsafe fn dw_images(job: &DwJob, imgs: Range<usize>, part: &mut [f32]) {
        let nv = job.masks.nv;
        // Images per block: enough pixel vectors per register reduction to amortise its
        // horizontal sums, few enough for the block's x and dy to stay in L2.
        let image_bytes = (job.nin * job.src_ch + job.nout * job.ho * job.wo) * 4;
        let block = (256 / nv).clamp(1, ((512 << 10) / image_bytes).max(1));
        let mut b0 = imgs.start;
        while b0 < imgs.end {
            let b1 = (b0 + block).min(imgs.end);
            if job.taps.len().is_multiple_of(3) {
                dw_block::<4, 2, 3>(job, b0..b1, part);
            } else {
                dw_block::<4, 6, 1>(job, b0..b1, part);
            }
            b0 = b1;
        }
    }

    /// Every (A output × B input channels × T taps) tile over images `imgs`. Channel indices
    /// past the end are clamped to the last one and their sums dropped, so odd channel counts
    /// need no tile variants.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn dw_block<const A: usize, const B: usize, const T: usize>(
        job: &DwJob,
        imgs: Range<usize>,
        part: &mut [f32],
    ) {
        let (nout, nin, nt) = (job.nout, job.nin, job.taps.len());
        for o0 in (0..nout).step_by(A) {
            let co: [usize; A] = std::array::from_fn(|a| (o0 + a).min(nout - 1));
            for i0 in (0..nin).step_by(B) {
                let ci: [usize; B] = std::array::from_fn(|b| (i0 + b).min(nin - 1));
                for t0 in (0..nt).step_by(T) {
                    let taps: [KTap; T] = std::array::from_fn(|t| job.taps[t0 + t]);
                    let acc = dw_tile::<A, B, T>(job, imgs.clone(), &co, &ci, &taps);
                    for a in 0..A.min(nout - o0) {
                        for b in 0..B.min(nin - i0) {
                            for t in 0..T {
                                part[((o0 + a) * nin + i0 + b) * nt + t0 + t] += acc[a][b][t];
                            }
                        }
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn dw_tile<const A: usize, const B: usize, const T: usize>(
        job: &DwJob,
        imgs: Range<usize>,
        co: &[usize; A],
        ci: &[usize; B],
        taps: &[KTap; T],
    ) -> [[[f32; T]; B]; A] {
        let hw = job.ho * job.wo;
        let nv = job.masks.nv;
        let mut acc = [[[_mm512_setzero_ps(); T]; B]; A];
        let (dyb, sb) = (job.dy.as_ptr(), job.src.as_ptr());
        let mut dp = [dyb; A];
        for a in 0..A {
            dp[a] = dyb.add(co[a] * hw);
        }
        let mut sp = [[sb; T]; B];
        for b in 0..B {
            for t in 0..T {
                sp[b][t] = sb.wrapping_offset((ci[b] * job.src_ch) as isize + taps[t].off);
            }
        }
        let (dy_img, src_img) = (job.nout * hw, job.src_img);
        // pixel vectors outside, images inside: the lane masks depend only on the vector, so
        // they stay in mask registers while the images stream past
        for v in 0..nv {
            let cm = job.masks.get(CENTRE, v);
            let mut tm = [0u16; T];
            for t in 0..T {
                tm[t] = job.masks.get(taps[t].kind, v);
            }
            let q = (v * 16) as isize - job.masks.shift as isize;
            for img in imgs.clone() {
                let (od, os) = ((img * dy_img) as isize + q, (img * src_img) as isize + q);
                let mut d = [_mm512_setzero_ps(); A];
                for a in 0..A {
                    d[a] = _mm512_maskz_loadu_ps(cm, dp[a].wrapping_offset(od));
                }
                for b in 0..B {
                    for t in 0..T {
                        let x = _mm512_maskz_loadu_ps(tm[t], sp[b][t].wrapping_offset(os));
                        for a in 0..A {
                            acc[a][b][t] = _mm512_fmadd_ps(d[a], x, acc[a][b][t]);
                        }
                    }
                }
            }
        }
        let mut sums = [[[0f32; T]; B]; A];
        for a in 0..A {
            for b in 0..B {
                for t in 0..T {
                    sums[a][b][t] = _mm512_reduce_add_ps(acc[a][b][t]);
                }
            }
        }
        sums
    }
}
