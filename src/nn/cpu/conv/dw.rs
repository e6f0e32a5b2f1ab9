//! The SIMD weight gradient over vectors of output channels ([`DwKernel::Channels`]), written
//! once over [`Simd`] for both vector widths: [`dw_images`] (the weight gradient of a run of
//! images) and its register tiles [`DwTiles`]; each instruction set brings its tile shapes
//! ([`Simd::dw_tiles`]) and its transpose of dy's planes to pixel-major rows
//! ([`Simd::transpose`]).
//!
//! The scheme: vectorise over output channels rather than over pixels, so that no sum is ever
//! reduced across lanes. Per image, dy is transposed to pixel-major order (each pixel's output
//! channels one vector) and x copied into planes with a one-pixel zero border; a tile then
//! holds O channel vectors × I input channels × T taps of one kernel row in registers, and
//! for every output pixel loads O dy vectors and broadcasts I·T input values from the padded
//! copy: no lane masks, no unaligned vector loads, and a stride-2 kernel is the same loop with
//! doubled input steps.
//!
//! [`DwKernel::Channels`]: super::plan::DwKernel::Channels

// Kernel loops index several arrays with the same constant bounds; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use std::marker::PhantomData;
use std::ops::Range;

use super::geom::ConvGeom;
use super::scratch::{pad_image, with_dy_rows, with_padded_copy};
use super::simd::Simd;

/// The weight gradient of images `imgs`, as [out vector][in][tap][lane] (`run_dw` makes the
/// sum of them [out][in][tap]).
///
/// # Safety
/// As for [`Simd`]'s methods; `x` and `dy` must hold every image in `imgs`.
#[inline(always)]
pub unsafe fn dw_images<S: Simd>(g: &ConvGeom, x: &[f32], dy: &[f32], imgs: Range<usize>) -> Vec<f32> {
    let (hw, kk) = (g.hw(), g.k * g.k);
    let op = g.cout.div_ceil(S::LANES) * S::LANES;
    let (wp, ps) = (g.w + 2, (g.h + 2) * (g.w + 2));
    let mut part_v = vec![0f32; op * g.cin * kk];
    // this thread's buffers: transpose writes every value of dyt, pad_image every interior
    // value of xp (whose border stays zero); the closures only call target-feature functions
    with_dy_rows(hw * op, |dyt| {
        with_padded_copy((g.cin, 1, g.h, g.w), |xp| {
            for img in imgs {
                S::transpose(dy.as_ptr().add(img * g.cout * hw), g.cout, hw, dyt.as_mut_ptr(), op);
                pad_image(&x[img * g.cin * g.h * g.w..][..g.cin * g.h * g.w], g, xp);
                let t = DwTiles {
                    g,
                    dyt: dyt.as_ptr(),
                    op,
                    xp: xp.as_ptr(),
                    wp,
                    ps,
                    simd: PhantomData,
                };
                S::dw_tiles(&t, &mut part_v);
            }
        })
    });
    part_v
}

/// One image's tiles: its transposed dy (`op` floats per pixel) and padded x (planes of `ps`
/// floats, rows of `wp`).
pub struct DwTiles<'a, S> {
    pub g: &'a ConvGeom,
    dyt: *const f32,
    /// Output channels rounded up to whole vectors.
    pub op: usize,
    xp: *const f32,
    wp: usize,
    ps: usize,
    simd: PhantomData<S>,
}

impl<S: Simd> DwTiles<'_, S> {
    /// Every tile by [`DwTiles::tile`].
    ///
    /// # Safety
    /// As for [`Simd`]'s methods; O must divide the channel vectors.
    #[inline(always)]
    pub unsafe fn run<const O: usize, const I: usize, const T: usize>(&self, part_v: &mut [f32]) {
        self.each_tile::<O, I, T, false>(part_v);
    }

    /// [`DwTiles::run`] for 3×3 kernels at stride 1 with [`DwTiles::tile_row`].
    ///
    /// # Safety
    /// As for [`DwTiles::run`].
    #[inline(always)]
    pub unsafe fn run_rows<const O: usize, const I: usize>(&self, part_v: &mut [f32]) {
        self.each_tile::<O, I, 3, true>(part_v);
    }

    /// Every (O channel vectors × I input channels × kernel row) tile, by [`DwTiles::tile_row`]
    /// when ROWS, else by [`DwTiles::tile`], each added to `part_v` ([o vector][i][t][lane]).
    /// Input channels past the end are clamped to the last one and their sums dropped.
    #[inline(always)]
    unsafe fn each_tile<const O: usize, const I: usize, const T: usize, const ROWS: bool>(&self, part_v: &mut [f32]) {
        let g = self.g;
        let (k, kk, pad) = (g.k, g.k * g.k, g.k / 2);
        // the tiles read O whole channel vectors: the tile choice makes O divide their count
        debug_assert!((self.op / S::LANES).is_multiple_of(O));
        for ov0 in (0..self.op / S::LANES).step_by(O) {
            for i0 in (0..g.cin).step_by(I) {
                for ky in 0..k {
                    // padded row s·r + ky + 1 − pad, column s·c + kx + 1 − pad
                    let first = (ky + 1 - pad) * self.wp + 1 - pad;
                    let mut xs = [self.xp; I];
                    for i in 0..I {
                        xs[i] = self.xp.add((i0 + i).min(g.cin - 1) * self.ps + first);
                    }
                    let acc = match ROWS {
                        true => self.tile_row::<O, I, T>(ov0, xs, self.rows(ky)),
                        false => self.tile::<O, I, T>(ov0, xs, self.rows(ky)),
                    };
                    for o in 0..O {
                        for i in 0..I.min(g.cin - i0) {
                            for t in 0..T {
                                let at = part_v
                                    .as_mut_ptr()
                                    .add((((ov0 + o) * g.cin + i0 + i) * kk + ky * k + t) * S::LANES);
                                S::storeu(at, S::add(S::loadu(at), acc[o][i][t]));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The output rows whose kernel row `ky` reads an input row rather than the zero border
    /// (padded row s·r + ky + 1 − pad in 1..=h): the others add nothing.
    fn rows(&self, ky: usize) -> Range<usize> {
        let (g, pad) = (self.g, self.g.k / 2);
        let lo = pad.saturating_sub(ky).div_ceil(g.stride);
        let hi = (g.h + pad)
            .checked_sub(ky + 1)
            .map_or(0, |top| (top / g.stride + 1).min(g.ho));
        lo.min(hi)..hi
    }

    /// A 3×3 stride-1 tile (T = 3) that reads each input value once: padded column p is tap kx
    /// of output column p − kx, so one broadcast feeds three FMAs, with the dy vectors of
    /// columns p, p − 1 and p − 2 kept in registers (O + I broadcasts and loads per 3·O·I
    /// FMAs, against O + 3·I for [`DwTiles::tile`]).
    #[inline(always)]
    unsafe fn tile_row<const O: usize, const I: usize, const T: usize>(
        &self,
        ov0: usize,
        xs: [*const f32; I],
        rows: Range<usize>,
    ) -> [[[S::V; T]; I]; O] {
        debug_assert_eq!(T, 3);
        let g = self.g;
        let (op, wo) = (self.op, g.wo);
        let mut acc = [[[S::zero(); T]; I]; O];
        for r in rows {
            let mut xr = xs;
            for i in 0..I {
                xr[i] = xs[i].add(r * self.wp);
            }
            let drow = self.dyt.add(r * wo * op + ov0 * S::LANES);
            // padded column 0 is the zero border too, but a loop entered with dy loaded (to
            // skip it) got one accumulator spilled to the stack: 40% slower
            let zero = [S::zero(); O];
            let (mut d1, mut d2) = (zero, zero);
            for p in 0..wo {
                let mut d0 = zero;
                for o in 0..O {
                    d0[o] = S::load(drow.add(p * op + o * S::LANES));
                }
                row_step::<S, O, I, T, 0, 3>(&mut acc, &xr, p, [&d0, &d1, &d2]);
                d2 = d1;
                d1 = d0;
            }
            // the last input column: no output column has it as tap 0; padded column wo + 1
            // is the zero border
            row_step::<S, O, I, T, 1, 3>(&mut acc, &xr, wo, [&d1, &d1, &d2]);
        }
        acc
    }

    /// The general tile: for every output pixel, O dy vectors and I·T broadcast input values.
    #[inline(always)]
    unsafe fn tile<const O: usize, const I: usize, const T: usize>(
        &self,
        ov0: usize,
        xs: [*const f32; I],
        rows: Range<usize>,
    ) -> [[[S::V; T]; I]; O] {
        let g = self.g;
        let (s, op) = (g.stride, self.op);
        let mut acc = [[[S::zero(); T]; I]; O];
        let mut d = self.dyt.add((rows.start * g.wo * op) + ov0 * S::LANES);
        for r in rows {
            let mut xr = xs;
            for i in 0..I {
                xr[i] = xs[i].add(s * r * self.wp);
            }
            for c in 0..g.wo {
                let mut dv = [S::zero(); O];
                for o in 0..O {
                    dv[o] = S::load(d.add(o * S::LANES));
                }
                for i in 0..I {
                    for t in 0..T {
                        let xv = S::splat(*xr[i].add(s * c + t));
                        for o in 0..O {
                            acc[o][i][t] = S::fmadd(dv[o], xv, acc[o][i][t]);
                        }
                    }
                }
                d = d.add(op);
            }
        }
        acc
    }
}

/// Padded column `p` of a 3×3 stride-1 tile row: the FMAs of taps LO..HI, tap t with `d[t]`,
/// the dy vectors of output column p − t.
#[inline(always)]
unsafe fn row_step<S: Simd, const O: usize, const I: usize, const T: usize, const LO: usize, const HI: usize>(
    acc: &mut [[[S::V; T]; I]; O],
    xr: &[*const f32; I],
    p: usize,
    d: [&[S::V; O]; 3],
) {
    for i in 0..I {
        let xv = S::splat(*xr[i].add(p));
        for o in 0..O {
            for t in LO..HI {
                acc[o][i][t] = S::fmadd(d[t][o], xv, acc[o][i][t]);
            }
        }
    }
}
