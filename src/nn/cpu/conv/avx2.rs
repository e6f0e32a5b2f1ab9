//! AVX2 + FMA, in 16 ymm registers: the [`Simd`](super::simd::Simd) primitives at 8 lanes,
//! this instruction set's tile shapes for the shared kernels, and its own padded kernel.
//! Forward-style passes on planes whose rows are whole 8-pixel vectors read a zero-bordered
//! copy of each image ([`fwd_padded`]: tiles of 2 pixel vectors × 6 output channels, no masks);
//! other planes use the shared masked kernel (`masked`) at 8 pixels per register ([`fwd_unit`]:
//! 2 pixel vectors × 4 channels, the lane masks as vector masks for `vmaskmovps`, which never
//! touches masked-off lanes). The weight gradient is the shared one (`dw`) at 8 output
//! channels per register ([`dw_images`]).
//!
//! Measured on a 2-core AMD EPYC (AVX2, FMA peak ~190 GFLOP/s), `runner bench --op conv`,
//! 3×3 16→16 at 32×32, batch 128: the masked forward tile ran at 60–70 GFLOP/s (its planes,
//! exactly 4 KiB apart, also fought over L1 sets), the padded one at 130–140; the earlier
//! pixel-vector weight gradient (masks and horizontal sums per tile) at 25, this one at 105–130.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "x86_64"))]
pub(super) use super::scalar::fwd_unit;

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dw_images, fwd_padded, fwd_unit};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::dw::{self, DwTiles};
    use super::super::geom::{ConvGeom, Masks};
    use super::super::job::Job;
    use super::super::masked;
    use super::super::plan::PAD_OT;
    use super::super::simd::Simd;

    /// Output channels per masked forward tile: the packing width of `Job::wp`.
    const OT: usize = 4;

    /// The AVX2 + FMA vectors: 8 lanes.
    pub struct Avx2;

    // SAFETY: __m256 holds 8 f32 values; vmaskmovps does not touch masked-off lanes;
    // transpose writes `hw` rows of `op` floats
    unsafe impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        type Mask = __m256i;

        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_load_ps(p)
        }
        #[inline(always)]
        unsafe fn loadu(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn storeu(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn no_lanes() -> __m256i {
            _mm256_setzero_si256()
        }
        /// The 8-lane mask of 8-pixel vector `v` (half of a 16-pixel mask) as a vector mask.
        #[inline(always)]
        unsafe fn mask(masks: &Masks, kind: usize, v: usize) -> __m256i {
            let m = ((masks.get(kind, v / 2) >> (8 * (v % 2))) & 0xff) as i32;
            let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m), bits), bits)
        }
        #[inline(always)]
        unsafe fn load_masked(m: __m256i, p: *const f32) -> __m256 {
            _mm256_maskload_ps(p, m)
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, m: __m256i, v: __m256) {
            _mm256_maskstore_ps(p, m, v)
        }

        /// Tiles of 2 vectors (3 × 4 channels would need more than the 16 registers).
        fn tile_split(nv: usize) -> (usize, usize) {
            (0, nv / 2)
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

    /// One image × one tile of 4 output channels of a [`Job`] (see `masked`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `out` must be valid for writes of this unit's planes.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn fwd_unit(job: &Job, img: usize, tile: usize, out: *mut f32) {
        masked::fwd_unit::<Avx2, OT>(job, img, tile, out)
    }

    /// [`masked::fwd_tile`] with this module's features.
    #[target_feature(enable = "avx2,fma")]
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
        masked::fwd_tile::<Avx2, P, OT>(job, src, wp, v0, out, ch0, nvalid)
    }

    /// The weight gradient of images `imgs` at 8 output channels per register (see `dw`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` and `dy` must hold every image in `imgs`.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn dw_images(g: &ConvGeom, x: &[f32], dy: &[f32], imgs: Range<usize>) -> Vec<f32> {
        dw::dw_images::<Avx2>(g, x, dy, imgs)
    }

    /// One image's weight-gradient tiles within the 16 ymm registers: 1 channel vector × 4
    /// input channels × 3 taps reading each input value once (3×3, stride 1), else 2 × 2 × 3
    /// (3×3) or 2 × 6 (1×1).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dw_tiles(t: &DwTiles<'_, Avx2>, part_v: &mut [f32]) {
        let (g, ovs) = (t.g, t.op / 8);
        match (g.k, ovs % 2) {
            (3, _) if g.stride == 1 => t.run_rows::<1, 4>(part_v),
            (3, 0) => t.run::<2, 2, 3>(part_v),
            (3, _) => t.run::<1, 4, 3>(part_v),
            (_, 0) => t.run::<2, 6, 1>(part_v),
            _ => t.run::<1, 8, 1>(part_v),
        }
    }

    /// One image × one tile of 6 output channels of a [`Job`] on the image's zero-bordered
    /// copy `xp` (channel blocks of `pch` floats; `offs`: each tap's offset in them): every
    /// load is a plain unaligned load and every store a plain store, and with no lane masks
    /// in registers a tile holds 2 pixel vectors × 6 channels of accumulators (12 of the 16
    /// ymm registers; 3 × 4 would need all 16, and LLVM then spilled one to the stack inside
    /// the loop). Rows must be whole vectors (`wo` % 8 = 0); `out` is the image's first
    /// output plane.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `xp` must hold `nin` blocks laid out as `run_padded`
    /// makes them; `out` must be valid for writes of this tile's planes, and `add` (the
    /// image's planes of `job.add`) for reads of them.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn fwd_padded(
        job: &Job,
        xp: &[f32],
        pch: usize,
        offs: &[isize],
        tile: usize,
        (out, add): (*mut f32, Option<*const f32>),
    ) {
        debug_assert!(job.wo.is_multiple_of(8) && xp.len() >= job.nin * pch && job.out_tile == PAD_OT);
        let (nvr, wpd) = (job.wo / 8, job.wo + 2);
        let nv = job.ho * nvr;
        // vector v: its first pixel in the padded planes and in the output plane
        let at = |v: usize| {
            let (r, c) = (v / nvr, (v % nvr) * 8);
            (((r + 1) * wpd + c + 1) as isize, r * job.wo + c)
        };
        let t = PadTile {
            job,
            xp: xp.as_ptr(),
            pch,
            offs,
            wp: job.wp.as_ptr().add(tile * offs.len() * job.nin * PAD_OT),
            out: out.add(tile * PAD_OT * job.out_ch),
            add: add.map(|a| a.add(tile * PAD_OT * job.out_ch)),
            ch0: tile * PAD_OT,
            nvalid: (job.nout - tile * PAD_OT).min(PAD_OT),
        };
        // the last tile of a channel count that is no multiple of 6 computes only what it needs
        let run = |v: usize, p: usize| match (p, t.nvalid) {
            (2, 5..) => t.run::<2, 6>([at(v), at(v + 1)]),
            (2, 3..) => t.run::<2, 4>([at(v), at(v + 1)]),
            (2, _) => t.run::<2, 2>([at(v), at(v + 1)]),
            (_, 5..) => t.run::<1, 6>([at(v)]),
            (_, 3..) => t.run::<1, 4>([at(v)]),
            _ => t.run::<1, 2>([at(v)]),
        };
        let mut v = 0;
        while v < nv {
            let p = (nv - v).min(2);
            run(v, p);
            v += p;
        }
    }

    /// The fixed part of [`fwd_padded`]'s tiles.
    struct PadTile<'a> {
        job: &'a Job<'a>,
        xp: *const f32,
        pch: usize,
        offs: &'a [isize],
        wp: *const f32,
        out: *mut f32,
        /// The values to add to `out`'s (see [`Job::add`]).
        add: Option<*const f32>,
        ch0: usize,
        nvalid: usize,
    }

    impl PadTile<'_> {
        /// P pixel vectors (padded-input and output positions) × the first C of the tile's
        /// output channels (C ≥ the tile's valid channels).
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn run<const P: usize, const C: usize>(&self, at: [(isize, usize); P]) {
            let job = self.job;
            let mut acc = [[_mm256_setzero_ps(); P]; C];
            let mut wj = self.wp;
            for &off in self.offs {
                let mut xs: [*const f32; P] = std::array::from_fn(|p| self.xp.offset(at[p].0 + off));
                for _ in 0..job.nin {
                    let x: [__m256; P] = std::array::from_fn(|p| _mm256_loadu_ps(xs[p]));
                    for c in 0..C {
                        let wv = _mm256_broadcast_ss(&*wj.add(c));
                        for p in 0..P {
                            acc[c][p] = _mm256_fmadd_ps(x[p], wv, acc[c][p]);
                        }
                    }
                    wj = wj.add(PAD_OT);
                    for p in 0..P {
                        xs[p] = xs[p].add(self.pch);
                    }
                }
            }
            for c in 0..self.nvalid {
                for p in 0..P {
                    let mut v = acc[c][p];
                    let o = c * job.out_ch + at[p].1;
                    if let Some(b) = job.bias {
                        v = _mm256_add_ps(v, _mm256_set1_ps(b[self.ch0 + c]));
                    }
                    if let Some(a) = self.add {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(a.add(o)));
                    }
                    if job.relu {
                        v = _mm256_max_ps(v, _mm256_setzero_ps());
                    }
                    _mm256_storeu_ps(self.out.add(o), v);
                }
            }
        }
    }

    /// dy's `cout` planes of `hw` pixels → `hw` rows of `op` floats (channels past `cout`
    /// zero), 8 × 8 blocks at a time. `out` must be 32-byte aligned.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose(dy: *const f32, cout: usize, hw: usize, out: *mut f32, op: usize) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for ob in 0..op / 8 {
            for qb in 0..hw.div_ceil(8) {
                let q0 = qb * 8;
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((hw - q0).min(8) as i32), lanes);
                let mut r = [_mm256_setzero_ps(); 8];
                for j in 0..8 {
                    let o = ob * 8 + j;
                    if o < cout {
                        r[j] = _mm256_maskload_ps(dy.add(o * hw + q0), m);
                    }
                }
                let c = transpose8(r);
                for j in 0..8.min(hw - q0) {
                    _mm256_store_ps(out.add((q0 + j) * op + ob * 8), c[j]);
                }
            }
        }
    }

    /// The transpose of an 8 × 8 block held as 8 row vectors.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // interleave 32-bit elements of row pairs, then 64-bit pairs, then swap 128-bit halves
        let mut t = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm256_setzero_ps(); 8];
        for k in 0..2 {
            let b = 4 * k;
            u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
            u[b + 1] = _mm256_shuffle_ps::<0xee>(t[b], t[b + 2]);
            u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
            u[b + 3] = _mm256_shuffle_ps::<0xee>(t[b + 1], t[b + 3]);
        }
        let mut c = [_mm256_setzero_ps(); 8];
        for j in 0..4 {
            c[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j]);
            c[4 + j] = _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j]);
        }
        c
    }
}
