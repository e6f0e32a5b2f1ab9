//! AVX2 + FMA kernels: the AVX-512 kernels' scheme at 8 pixels per register, with 16 ymm
//! registers: forward tiles of 2 pixel vectors × 4 output channels, weight-gradient tiles of
//! 2 output × 2 input channels × 3 taps (2 × 4 × 1 for 1×1 kernels). Lane masks become vector
//! masks for `vmaskmovps`, which also never touches masked-off lanes.

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

    use super::super::{DwJob, Job, KTap, Masks, CENTRE};

    /// Output channels per forward tile: the packing width of `Job::wp`.
    const OT: usize = 4;

    /// The 8-lane mask of 8-pixel vector `v` (half of a 16-pixel mask) as a vector mask.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn mask(masks: &Masks, kind: usize, v: usize) -> __m256i {
        let m = ((masks.get(kind, v / 2) >> (8 * (v % 2))) & 0xff) as i32;
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m), bits), bits)
    }

    /// One image × one tile of 4 output channels of a [`Job`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `out` must be valid for writes of this unit's planes.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn fwd_unit(job: &Job, img: usize, tile: usize, out: *mut f32) {
        debug_assert_eq!(job.out_tile, OT);
        let nv = 2 * job.masks.nv;
        let nvalid = (job.nout - tile * OT).min(OT);
        let src = job.src.as_ptr().add(img * job.src_img);
        let wp = job.wp.as_ptr().add(tile * job.taps.len() * job.nin * OT);
        let out = out.add(img * job.out_img + tile * OT * job.out_ch);
        let ch0 = tile * OT;
        let mut v = 0;
        while v + 2 <= nv {
            fwd_tile::<2>(job, src, wp, v, out, ch0, nvalid);
            v += 2;
        }
        if v < nv {
            fwd_tile::<1>(job, src, wp, v, out, ch0, nvalid);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fwd_tile<const P: usize>(
        job: &Job,
        src: *const f32,
        wp: *const f32,
        v0: usize,
        out: *mut f32,
        ch0: usize,
        nvalid: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); P]; OT];
        let (nin, sch) = (job.nin, job.src_ch);
        let q0 = (v0 * 8) as isize - job.masks.shift as isize;
        for (j, tap) in job.taps.iter().enumerate() {
            let mut m = [_mm256_setzero_si256(); P];
            for p in 0..P {
                m[p] = mask(job.masks, tap.kind, v0 + p);
            }
            let mut xp = src.wrapping_offset(tap.off + q0);
            let mut wj = wp.add(j * nin * OT);
            for _ in 0..nin {
                let mut xs = [_mm256_setzero_ps(); P];
                for p in 0..P {
                    xs[p] = _mm256_maskload_ps(xp.wrapping_add(p * 8), m[p]);
                }
                for c in 0..OT {
                    let wv = _mm256_set1_ps(*wj.add(c));
                    for p in 0..P {
                        acc[c][p] = _mm256_fmadd_ps(xs[p], wv, acc[c][p]);
                    }
                }
                wj = wj.add(OT);
                xp = xp.wrapping_add(sch);
            }
        }
        for p in 0..P {
            let sm = mask(job.masks, CENTRE, v0 + p);
            for c in 0..nvalid {
                let mut v = acc[c][p];
                if let Some(b) = job.bias {
                    v = _mm256_add_ps(v, _mm256_set1_ps(b[ch0 + c]));
                }
                if job.relu {
                    v = _mm256_max_ps(v, _mm256_setzero_ps());
                }
                _mm256_maskstore_ps(
                    out.wrapping_offset((c * job.out_ch) as isize + q0 + (p * 8) as isize),
                    sm,
                    v,
                );
            }
        }
    }

    /// Adds the weight gradient of images `imgs` to `part` ([out][in][tap]).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the job's slices must hold every image in `imgs`.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn dw_images(job: &DwJob, imgs: Range<usize>, part: &mut [f32]) {
        let nv = 2 * job.masks.nv;
        let block = (128 / nv).max(1);
        let mut b0 = imgs.start;
        while b0 < imgs.end {
            let b1 = (b0 + block).min(imgs.end);
            if job.taps.len().is_multiple_of(3) {
                dw_block::<2, 2, 3>(job, b0..b1, part);
            } else {
                dw_block::<2, 4, 1>(job, b0..b1, part);
            }
            b0 = b1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
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

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dw_tile<const A: usize, const B: usize, const T: usize>(
        job: &DwJob,
        imgs: Range<usize>,
        co: &[usize; A],
        ci: &[usize; B],
        taps: &[KTap; T],
    ) -> [[[f32; T]; B]; A] {
        let nv = 2 * job.masks.nv;
        let shift = job.masks.shift as isize;
        let mut acc = [[[_mm256_setzero_ps(); T]; B]; A];
        for img in imgs {
            let dyb = job.dy.as_ptr().add(img * job.dy_img);
            let sb = job.src.as_ptr().add(img * job.src_img);
            let mut dp = [dyb; A];
            for a in 0..A {
                dp[a] = dyb.add(co[a] * job.dy_ch);
            }
            let mut sp = [[sb; T]; B];
            for b in 0..B {
                for t in 0..T {
                    sp[b][t] = sb.wrapping_offset((ci[b] * job.src_ch) as isize + taps[t].off);
                }
            }
            for v in 0..nv {
                let cm = mask(job.masks, CENTRE, v);
                let mut d = [_mm256_setzero_ps(); A];
                for a in 0..A {
                    d[a] = _mm256_maskload_ps(dp[a].wrapping_offset((v * 8) as isize - shift), cm);
                }
                let mut tm = [cm; T];
                for t in 0..T {
                    tm[t] = mask(job.masks, taps[t].kind, v);
                }
                for b in 0..B {
                    for t in 0..T {
                        let x = _mm256_maskload_ps(sp[b][t].wrapping_offset((v * 8) as isize - shift), tm[t]);
                        for a in 0..A {
                            acc[a][b][t] = _mm256_fmadd_ps(d[a], x, acc[a][b][t]);
                        }
                    }
                }
            }
        }
        let mut sums = [[[0f32; T]; B]; A];
        for a in 0..A {
            for b in 0..B {
                for t in 0..T {
                    sums[a][b][t] = hsum(acc[a][b][t]);
                }
            }
        }
        sums
    }
}
