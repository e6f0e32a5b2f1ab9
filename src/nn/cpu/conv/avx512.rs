//! AVX-512 (F + VL) kernels.
//!
//! The forward tile holds 16 pixels of one channel plane per register, with masked loads for
//! the taps that reach past the plane's edge (masked-off lanes are neither read nor faulted
//! on): 3 pixel vectors × 8 output channels = 24 accumulators, 3 input vectors and 1 broadcast
//! weight of the 32 zmm registers. The weight gradient instead holds 16 output channels per
//! register (see [`dw_images`]). Tiles are const-generic so every index is a constant and LLVM
//! keeps the accumulators in registers.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "x86_64"))]
pub(super) use super::scalar::fwd_unit;

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dw_images, fwd_unit};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::super::geom::{ConvGeom, CENTRE};
    use super::super::job::Job;
    use super::super::scratch::{pad_image, with_dy_rows, with_padded_copy};

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
        let at = img * job.out_img + tile * OT * job.out_ch;
        let out = (out.add(at), job.add.map(|a| a.as_ptr().add(at)));
        // tiles of 3 vectors, and of 2 for the remainder (a lone 1-vector tile has too few
        // independent accumulators to hide the FMA latency)
        let (threes, twos) = match nv % 3 {
            _ if nv < 2 => (0, 0),
            0 => (nv / 3, 0),
            1 => ((nv - 4) / 3, 2),
            _ => ((nv - 2) / 3, 1),
        };
        let ch0 = tile * OT;
        let mut v = 0;
        for _ in 0..threes {
            fwd_tile::<3>(job, src, wp, v, out, ch0, nvalid);
            v += 3;
        }
        for _ in 0..twos {
            fwd_tile::<2>(job, src, wp, v, out, ch0, nvalid);
            v += 2;
        }
        if v < nv {
            fwd_tile::<1>(job, src, wp, v, out, ch0, nvalid);
        }
    }

    /// P pixel vectors from vector `v0` × 8 output channels from `ch0`, over every tap and
    /// input channel.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fwd_tile<const P: usize>(
        job: &Job,
        src: *const f32,
        wp: *const f32,
        v0: usize,
        (out, add): (*mut f32, Option<*const f32>),
        ch0: usize,
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
                let at = (c * job.out_ch) as isize + q0 + (p * 16) as isize;
                let mut v = acc[c][p];
                if let Some(b) = job.bias {
                    v = _mm512_add_ps(v, _mm512_set1_ps(b[ch0 + c]));
                }
                if let Some(a) = add {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(sm, a.wrapping_offset(at)));
                }
                if job.relu {
                    v = _mm512_max_ps(v, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(out.wrapping_offset(at), sm, v);
            }
        }
    }

    // The weight gradient (see `dw`) at 16 output channels per register.
    dw_kernel!(
        "avx512f,avx512vl",
        16,
        __m512,
        [
            _mm512_setzero_ps,
            _mm512_load_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_add_ps,
            _mm512_fmadd_ps,
            _mm512_set1_ps
        ],
        |t, g, ovs, part_v| match (g.k, ovs % 4, ovs % 2) {
            (3, 0, _) => t.run::<4, 2, 3>(&mut part_v),
            (3, _, 0) if g.stride == 1 => t.run_rows::<2, 4>(&mut part_v),
            (3, _, 0) => t.run::<2, 4, 3>(&mut part_v),
            (3, _, _) if g.stride == 1 => t.run_rows::<1, 8>(&mut part_v),
            (3, _, _) => t.run::<1, 8, 3>(&mut part_v),
            (_, 0, _) => t.run::<4, 4, 1>(&mut part_v),
            (_, _, 0) => t.run::<2, 8, 1>(&mut part_v),
            _ => t.run::<1, 8, 1>(&mut part_v),
        }
    );

    /// dy's `cout` planes of `hw` pixels → `hw` rows of `op` floats (channels past `cout`
    /// zero), 16 × 16 blocks at a time. `out` must be 64-byte aligned.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn transpose(dy: *const f32, cout: usize, hw: usize, out: *mut f32, op: usize) {
        for ob in 0..op / 16 {
            for qb in 0..hw.div_ceil(16) {
                let q0 = qb * 16;
                let m: u16 = if hw - q0 >= 16 { 0xffff } else { (1u16 << (hw - q0)) - 1 };
                let mut r = [_mm512_setzero_ps(); 16];
                for j in 0..16 {
                    let o = ob * 16 + j;
                    if o < cout {
                        r[j] = _mm512_maskz_loadu_ps(m, dy.add(o * hw + q0));
                    }
                }
                let c = transpose16(r);
                for j in 0..16.min(hw - q0) {
                    _mm512_store_ps(out.add((q0 + j) * op + ob * 16), c[j]);
                }
            }
        }
    }

    /// The transpose of a 16 × 16 block held as 16 row vectors.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // interleave 32-bit elements of row pairs, then 64-bit pairs, then 128-bit lanes twice
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            let b = 4 * k;
            u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
            u[b + 1] = _mm512_shuffle_ps::<0xee>(t[b], t[b + 2]);
            u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            u[b + 3] = _mm512_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for h in 0..2 {
            let b = 8 * h;
            for j in 0..4 {
                v[b + j] = _mm512_shuffle_f32x4::<0x88>(u[b + j], u[b + 4 + j]);
                v[b + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[b + j], u[b + 4 + j]);
            }
        }
        let mut c = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            c[j] = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
            c[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v[j], v[8 + j]);
        }
        c
    }
}
