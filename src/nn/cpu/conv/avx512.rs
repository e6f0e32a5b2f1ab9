//! AVX-512 (F + VL): the [`Simd`](super::simd::Simd) primitives at 16 lanes and this
//! instruction set's tile shapes for the shared kernels.
//!
//! The forward tile (`masked`) holds 16 pixels of one channel plane per register, with masked
//! loads for the taps that reach past the plane's edge (masked-off lanes are neither read nor
//! faulted on): 3 pixel vectors × 8 output channels = 24 accumulators, 3 input vectors and 1
//! broadcast weight of the 32 zmm registers. The weight gradient (`dw`) instead holds 16 output
//! channels per register.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "x86_64"))]
pub(super) use super::scalar::fwd_unit;

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dw_images, fwd_unit};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::dw::{self, DwTiles};
    use super::super::geom::{ConvGeom, Masks};
    use super::super::job::Job;
    use super::super::masked;
    use super::super::simd::Simd;

    /// Output channels per forward tile: the packing width of `Job::wp`.
    const OT: usize = 8;

    /// The AVX-512 (F + VL) vectors: 16 lanes.
    pub struct Avx512;

    // SAFETY: __m512 holds 16 f32 values; the masked loads and stores do not touch masked-off
    // lanes; transpose writes `hw` rows of `op` floats
    unsafe impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        type Mask = u16;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_load_ps(p)
        }
        #[inline(always)]
        unsafe fn loadu(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn storeu(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn no_lanes() -> u16 {
            0
        }
        #[inline(always)]
        unsafe fn mask(masks: &Masks, kind: usize, v: usize) -> u16 {
            masks.get(kind, v)
        }
        #[inline(always)]
        unsafe fn load_masked(m: u16, p: *const f32) -> __m512 {
            _mm512_maskz_loadu_ps(m, p)
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, m: u16, v: __m512) {
            _mm512_mask_storeu_ps(p, m, v)
        }

        /// Tiles of 3 vectors, and of 2 for the remainder.
        fn tile_split(nv: usize) -> (usize, usize) {
            match nv % 3 {
                _ if nv < 2 => (0, 0),
                0 => (nv / 3, 0),
                1 => ((nv - 4) / 3, 2),
                _ => ((nv - 2) / 3, 1),
            }
        }

        #[inline(always)]
        unsafe fn fwd_tile<const P: usize, const OT: usize>(
            job: &Job,
            src: *const f32,
            wp: *const f32,
            v0: usize,
            out: (*mut f32, Option<*const f32>),
            ch0: usize,
            nvalid: usize,
        ) {
            fwd_tile::<P, OT>(job, src, wp, v0, out, ch0, nvalid)
        }
        #[inline(always)]
        unsafe fn transpose(dy: *const f32, cout: usize, hw: usize, out: *mut f32, op: usize) {
            transpose(dy, cout, hw, out, op)
        }
        #[inline(always)]
        unsafe fn dw_tiles(t: &DwTiles<'_, Self>, part_v: &mut [f32]) {
            dw_tiles(t, part_v)
        }
    }

    /// One image × one tile of 8 output channels of a [`Job`] (see `masked`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; `out` must be valid for writes of this unit's planes.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(in super::super) unsafe fn fwd_unit(job: &Job, img: usize, tile: usize, out: *mut f32) {
        masked::fwd_unit::<Avx512, OT>(job, img, tile, out)
    }

    /// [`masked::fwd_tile`] with this module's features.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn fwd_tile<const P: usize, const OT: usize>(
        job: &Job,
        src: *const f32,
        wp: *const f32,
        v0: usize,
        out: (*mut f32, Option<*const f32>),
        ch0: usize,
        nvalid: usize,
    ) {
        masked::fwd_tile::<Avx512, P, OT>(job, src, wp, v0, out, ch0, nvalid)
    }

    /// The weight gradient of images `imgs` at 16 output channels per register (see `dw`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; `x` and `dy` must hold every image in `imgs`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(in super::super) unsafe fn dw_images(g: &ConvGeom, x: &[f32], dy: &[f32], imgs: Range<usize>) -> Vec<f32> {
        dw::dw_images::<Avx512>(g, x, dy, imgs)
    }

    /// One image's weight-gradient tiles, their shapes picked for the channel vectors' count.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn dw_tiles(t: &DwTiles<'_, Avx512>, part_v: &mut [f32]) {
        let (g, ovs) = (t.g, t.op / 16);
        match (g.k, ovs % 4, ovs % 2) {
            (3, 0, _) => t.run::<4, 2, 3>(part_v),
            (3, _, 0) if g.stride == 1 => t.run_rows::<2, 4>(part_v),
            (3, _, 0) => t.run::<2, 4, 3>(part_v),
            (3, _, _) if g.stride == 1 => t.run_rows::<1, 8>(part_v),
            (3, _, _) => t.run::<1, 8, 3>(part_v),
            (_, 0, _) => t.run::<4, 4, 1>(part_v),
            (_, _, 0) => t.run::<2, 8, 1>(part_v),
            _ => t.run::<1, 8, 1>(part_v),
        }
    }

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
