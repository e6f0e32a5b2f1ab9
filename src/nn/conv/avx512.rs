//! AVX-512 (F + VL) kernels.
//!
//! The forward tile holds 16 pixels of one channel plane per register, with masked loads for
//! the taps that reach past the plane's edge (masked-off lanes are neither read nor faulted
//! on): 3 pixel vectors × 8 output channels = 24 accumulators, 3 input vectors and 1 broadcast
//! weight of the 32 zmm registers. The weight gradient instead holds 16 output channels per
//! register (see [`dw_chunk`]). Tiles are const-generic so every index is a constant and LLVM
//! keeps the accumulators in registers.

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

#[cfg(not(target_arch = "x86_64"))]
pub(super) use super::scalar::fwd_unit;

#[cfg(target_arch = "x86_64")]
pub(super) use imp::{dw_chunk, fwd_unit};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::super::{pad_image, Aligned, Geom, Job, CENTRE};

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
        out: *mut f32,
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
                let o = out.wrapping_offset((c * job.out_ch) as isize + q0 + (p * 16) as isize);
                let mut v = acc[c][p];
                if let Some(b) = job.bias {
                    v = _mm512_add_ps(v, _mm512_set1_ps(b[ch0 + c]));
                }
                if job.relu {
                    v = _mm512_max_ps(v, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(o, sm, v);
            }
        }
    }

    /// The weight gradient of images `imgs` ([out][in][tap]), vectorised over 16 output
    /// channels rather than over pixels, so that no sum is ever reduced across lanes.
    ///
    /// Per image, dy is transposed to pixel-major order (each pixel's output channels one
    /// vector) and x copied into planes with a one-pixel zero border; a tile then holds
    /// O channel vectors × I input channels × T taps of one kernel row in registers, and for
    /// every output pixel loads O dy vectors and broadcasts I·T input values from the padded
    /// copy: no lane masks, no unaligned vector loads, and a stride-2 kernel is the same loop
    /// with doubled input steps.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and VL; `x` and `dy` must hold every image in `imgs`.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(in super::super) unsafe fn dw_chunk(g: &Geom, x: &[f32], dy: &[f32], imgs: Range<usize>) -> Vec<f32> {
        let (hw, kk) = (g.hw(), g.k * g.k);
        let ovs = g.cout.div_ceil(16);
        let op = ovs * 16;
        let (wp, ps) = (g.w + 2, (g.h + 2) * (g.w + 2));
        let mut dyt = Aligned::new(hw * op);
        // the border is zeroed here once; pad_image only ever writes the interior
        let mut xp = vec![0f32; g.cin * ps];
        let mut part_v = vec![0f32; op * g.cin * kk];
        for img in imgs {
            transpose(dy.as_ptr().add(img * g.cout * hw), g.cout, hw, dyt.as_mut_ptr(), op);
            pad_image(&x[img * g.cin * g.h * g.w..][..g.cin * g.h * g.w], g, &mut xp);
            let t = Tiles {
                g,
                dyt: dyt.as_ptr(),
                op,
                xp: xp.as_ptr(),
                wp,
                ps,
            };
            match (g.k, ovs % 4, ovs % 2) {
                (3, 0, _) => t.run::<4, 2, 3>(&mut part_v),
                (3, _, 0) if g.stride == 1 => t.run_rows::<2, 4>(&mut part_v),
                (3, _, 0) => t.run::<2, 4, 3>(&mut part_v),
                (3, _, _) if g.stride == 1 => t.run_rows::<1, 8>(&mut part_v),
                (3, _, _) => t.run::<1, 8, 3>(&mut part_v),
                (_, 0, _) => t.run::<4, 4, 1>(&mut part_v),
                (_, _, 0) => t.run::<2, 8, 1>(&mut part_v),
                _ => t.run::<1, 8, 1>(&mut part_v),
            }
        }
        // [o vector][i][t][lane] → [o][i][t]
        let mut part = vec![0f32; g.cout * g.cin * kk];
        for o in 0..g.cout {
            for it in 0..g.cin * kk {
                part[o * g.cin * kk + it] = part_v[((o / 16) * g.cin * kk + it) * 16 + o % 16];
            }
        }
        part
    }

    /// One image's tiles: its transposed dy (`op` floats per pixel) and padded x (planes of
    /// `ps` floats, rows of `wp`).
    struct Tiles<'a> {
        g: &'a Geom,
        dyt: *const f32,
        op: usize,
        xp: *const f32,
        wp: usize,
        ps: usize,
    }

    impl Tiles<'_> {
        /// Every tile by [`Tiles::tile`].
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn run<const O: usize, const I: usize, const T: usize>(&self, part_v: &mut [f32]) {
            self.each_tile::<O, I, T>(part_v, |ov0, xs| self.tile::<O, I, T>(ov0, xs));
        }

        /// [`Tiles::run`] for 3×3 kernels at stride 1 with [`Tiles::tile_row`].
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn run_rows<const O: usize, const I: usize>(&self, part_v: &mut [f32]) {
            self.each_tile::<O, I, 3>(part_v, |ov0, xs| self.tile_row::<O, I>(ov0, xs));
        }

        /// Every (O channel vectors × I input channels × kernel row) tile, each added to
        /// `part_v` ([o vector][i][t][lane]). Input channels past the end are clamped to the
        /// last one and their sums dropped.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn each_tile<const O: usize, const I: usize, const T: usize>(
            &self,
            part_v: &mut [f32],
            tile: impl Fn(usize, [*const f32; I]) -> [[[__m512; T]; I]; O],
        ) {
            let g = self.g;
            let (k, kk, pad) = (g.k, g.k * g.k, g.k / 2);
            for ov0 in (0..self.op / 16).step_by(O) {
                for i0 in (0..g.cin).step_by(I) {
                    for ky in 0..k {
                        // padded row s·r + ky + 1 − pad, column s·c + kx + 1 − pad
                        let first = (ky + 1 - pad) * self.wp + 1 - pad;
                        let xs: [*const f32; I] =
                            std::array::from_fn(|i| self.xp.add((i0 + i).min(g.cin - 1) * self.ps + first));
                        let acc = tile(ov0, xs);
                        for o in 0..O {
                            for i in 0..I.min(g.cin - i0) {
                                for t in 0..T {
                                    let at = part_v
                                        .as_mut_ptr()
                                        .add((((ov0 + o) * g.cin + i0 + i) * kk + ky * k + t) * 16);
                                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), acc[o][i][t]));
                                }
                            }
                        }
                    }
                }
            }
        }

        /// A 3×3 stride-1 tile that reads each input value once: padded column p is tap kx of
        /// output column p − kx, so one broadcast feeds three FMAs, with the dy vectors of
        /// columns p, p − 1 and p − 2 kept in registers (O + I broadcasts and loads per 3·O·I
        /// FMAs, against O + 3·I for [`Tiles::tile`]).
        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn tile_row<const O: usize, const I: usize>(
            &self,
            ov0: usize,
            xs: [*const f32; I],
        ) -> [[[__m512; 3]; I]; O] {
            let g = self.g;
            let (op, wo) = (self.op, g.wo);
            let mut acc = [[[_mm512_setzero_ps(); 3]; I]; O];
            let zero = [_mm512_setzero_ps(); O];
            // column p of the padded row: FMAs of taps 0, 1, 2 with the dy of columns p, p − 1, p − 2
            let step = |acc: &mut [[[__m512; 3]; I]; O], xr: &[*const f32; I], p: usize, d: [&[__m512; O]; 3]| {
                for i in 0..I {
                    let xv = _mm512_set1_ps(*xr[i].add(p));
                    for o in 0..O {
                        for t in 0..3 {
                            acc[o][i][t] = _mm512_fmadd_ps(d[t][o], xv, acc[o][i][t]);
                        }
                    }
                }
            };
            for r in 0..g.ho {
                let xr: [*const f32; I] = std::array::from_fn(|i| xs[i].add(r * self.wp));
                let drow = self.dyt.add(r * wo * op + ov0 * 16);
                let load =
                    |c: usize| -> [__m512; O] { std::array::from_fn(|o| _mm512_load_ps(drow.add(c * op + o * 16))) };
                let (mut d1, mut d2) = (zero, zero);
                for p in 0..wo {
                    let d0 = load(p);
                    step(&mut acc, &xr, p, [&d0, &d1, &d2]);
                    d2 = d1;
                    d1 = d0;
                }
                // the right border's two columns: no tap-0 output column
                step(&mut acc, &xr, wo, [&zero, &d1, &d2]);
                step(&mut acc, &xr, wo + 1, [&zero, &zero, &d1]);
            }
            acc
        }

        #[target_feature(enable = "avx512f,avx512vl")]
        #[inline]
        unsafe fn tile<const O: usize, const I: usize, const T: usize>(
            &self,
            ov0: usize,
            xs: [*const f32; I],
        ) -> [[[__m512; T]; I]; O] {
            let g = self.g;
            let (s, op) = (g.stride, self.op);
            let mut acc = [[[_mm512_setzero_ps(); T]; I]; O];
            let mut d = self.dyt.add(ov0 * 16);
            for r in 0..g.ho {
                let xr: [*const f32; I] = std::array::from_fn(|i| xs[i].add(s * r * self.wp));
                for c in 0..g.wo {
                    let mut dv = [_mm512_setzero_ps(); O];
                    for o in 0..O {
                        dv[o] = _mm512_load_ps(d.add(o * 16));
                    }
                    for i in 0..I {
                        for t in 0..T {
                            let xv = _mm512_set1_ps(*xr[i].add(s * c + t));
                            for o in 0..O {
                                acc[o][i][t] = _mm512_fmadd_ps(dv[o], xv, acc[o][i][t]);
                            }
                        }
                    }
                    d = d.add(op);
                }
            }
            acc
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
