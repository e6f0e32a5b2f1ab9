//! The SIMD weight gradient over vectors of output channels ([`plan::DwKernel::Channels`]),
//! written once for both vector widths: `dw_kernel!` expands to a `dw_images` function (the
//! weight gradient of a run of images) and its register tiles `DwTiles` inside `avx512::imp`
//! (16 lanes) and `avx2::imp` (8 lanes), with that module's intrinsics, target features and
//! tile choice; each module brings its own `transpose` (dy's planes to pixel-major rows).
//!
//! [`plan::DwKernel::Channels`]: super::plan::DwKernel::Channels
//!
//! The scheme: vectorise over output channels rather than over pixels, so that no sum is ever
//! reduced across lanes. Per image, dy is transposed to pixel-major order (each pixel's output
//! channels one vector) and x copied into planes with a one-pixel zero border; a tile then
//! holds O channel vectors × I input channels × T taps of one kernel row in registers, and
//! for every output pixel loads O dy vectors and broadcasts I·T input values from the padded
//! copy: no lane masks, no unaligned vector loads, and a stride-2 kernel is the same loop with
//! doubled input steps.

/// `dw_kernel!(features, lanes, vector type, [setzero, load, loadu, storeu, add, fmadd, set1],
/// |tiles, geometry, channel vectors, sums| tile choice)`: see the module documentation.
macro_rules! dw_kernel {
    (
        $feature:literal, $lanes:literal, $v:ty,
        [$zero:ident, $load:ident, $loadu:ident, $storeu:ident, $add:ident, $fmadd:ident, $set1:ident],
        |$t:ident, $g:ident, $ovs:ident, $part_v:ident| $pick:expr
    ) => {
        /// The weight gradient of images `imgs`, as [out vector][in][tap][lane] (see
        /// `dw`; `run_dw` makes the sum of them [out][in][tap]).
        ///
        /// # Safety
        /// The CPU must support this module's target features; `x` and `dy` must hold every
        /// image in `imgs`.
        #[target_feature(enable = $feature)]
        pub(in super::super) unsafe fn dw_images(
            g: &ConvGeom,
            x: &[f32],
            dy: &[f32],
            imgs: std::ops::Range<usize>,
        ) -> Vec<f32> {
            let (hw, kk) = (g.hw(), g.k * g.k);
            let $ovs = g.cout.div_ceil($lanes);
            let op = $ovs * $lanes;
            let (wp, ps) = (g.w + 2, (g.h + 2) * (g.w + 2));
            let mut $part_v = vec![0f32; op * g.cin * kk];
            // this thread's buffers: transpose writes every value of dyt, pad_image every
            // interior value of xp (whose border stays zero)
            with_dy_rows(hw * op, |dyt| {
                with_padded_copy((g.cin, 1, g.h, g.w), |xp| {
                    for img in imgs {
                        transpose(
                            dy.as_ptr().add(img * g.cout * hw),
                            g.cout,
                            hw,
                            dyt.as_mut_ptr(),
                            op,
                        );
                        pad_image(&x[img * g.cin * g.h * g.w..][..g.cin * g.h * g.w], g, xp);
                        let $t = DwTiles {
                            g,
                            dyt: dyt.as_ptr(),
                            op,
                            xp: xp.as_ptr(),
                            wp,
                            ps,
                        };
                        let $g = g;
                        $pick;
                    }
                })
            });
            $part_v
        }

        /// One image's tiles: its transposed dy (`op` floats per pixel) and padded x (planes
        /// of `ps` floats, rows of `wp`).
        struct DwTiles<'a> {
            g: &'a ConvGeom,
            dyt: *const f32,
            op: usize,
            xp: *const f32,
            wp: usize,
            ps: usize,
        }

        impl DwTiles<'_> {
            /// Every tile by [`DwTiles::tile`].
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn run<const O: usize, const I: usize, const T: usize>(&self, part_v: &mut [f32]) {
                self.each_tile::<O, I, T>(part_v, |ov0, xs, rows| self.tile::<O, I, T>(ov0, xs, rows));
            }

            /// [`DwTiles::run`] for 3×3 kernels at stride 1 with [`DwTiles::tile_row`].
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn run_rows<const O: usize, const I: usize>(&self, part_v: &mut [f32]) {
                self.each_tile::<O, I, 3>(part_v, |ov0, xs, rows| self.tile_row::<O, I>(ov0, xs, rows));
            }

            /// Every (O channel vectors × I input channels × kernel row) tile, each added to
            /// `part_v` ([o vector][i][t][lane]). Input channels past the end are clamped to
            /// the last one and their sums dropped.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn each_tile<const O: usize, const I: usize, const T: usize>(
                &self,
                part_v: &mut [f32],
                tile: impl Fn(usize, [*const f32; I], std::ops::Range<usize>) -> [[[$v; T]; I]; O],
            ) {
                let g = self.g;
                let (k, kk, pad) = (g.k, g.k * g.k, g.k / 2);
                // the tiles read O whole channel vectors: the tile choice makes O divide their count
                debug_assert!((self.op / $lanes).is_multiple_of(O));
                for ov0 in (0..self.op / $lanes).step_by(O) {
                    for i0 in (0..g.cin).step_by(I) {
                        for ky in 0..k {
                            // padded row s·r + ky + 1 − pad, column s·c + kx + 1 − pad
                            let first = (ky + 1 - pad) * self.wp + 1 - pad;
                            let xs: [*const f32; I] =
                                std::array::from_fn(|i| self.xp.add((i0 + i).min(g.cin - 1) * self.ps + first));
                            let acc = tile(ov0, xs, self.rows(ky));
                            for o in 0..O {
                                for i in 0..I.min(g.cin - i0) {
                                    for t in 0..T {
                                        let at = part_v
                                            .as_mut_ptr()
                                            .add((((ov0 + o) * g.cin + i0 + i) * kk + ky * k + t) * $lanes);
                                        $storeu(at, $add($loadu(at), acc[o][i][t]));
                                    }
                                }
                            }
                        }
                    }
                }
            }

            /// The output rows whose kernel row `ky` reads an input row rather than the zero
            /// border (padded row s·r + ky + 1 − pad in 1..=h): the others add nothing.
            fn rows(&self, ky: usize) -> std::ops::Range<usize> {
                let (g, pad) = (self.g, self.g.k / 2);
                let lo = pad.saturating_sub(ky).div_ceil(g.stride);
                let hi = (g.h + pad)
                    .checked_sub(ky + 1)
                    .map_or(0, |top| (top / g.stride + 1).min(g.ho));
                lo.min(hi)..hi
            }

            /// A 3×3 stride-1 tile that reads each input value once: padded column p is tap kx
            /// of output column p − kx, so one broadcast feeds three FMAs, with the dy vectors
            /// of columns p, p − 1 and p − 2 kept in registers (O + I broadcasts and loads per
            /// 3·O·I FMAs, against O + 3·I for [`DwTiles::tile`]).
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile_row<const O: usize, const I: usize>(
                &self,
                ov0: usize,
                xs: [*const f32; I],
                rows: std::ops::Range<usize>,
            ) -> [[[$v; 3]; I]; O] {
                let g = self.g;
                let (op, wo) = (self.op, g.wo);
                let mut acc = [[[$zero(); 3]; I]; O];
                for r in rows {
                    let xr: [*const f32; I] = std::array::from_fn(|i| xs[i].add(r * self.wp));
                    let drow = self.dyt.add(r * wo * op + ov0 * $lanes);
                    let load = |c: usize| -> [$v; O] { std::array::from_fn(|o| $load(drow.add(c * op + o * $lanes))) };
                    // padded column 0 is the zero border too, but a loop entered with dy loaded
                    // (to skip it) got one accumulator spilled to the stack: 40% slower
                    let zero = [$zero(); O];
                    let (mut d1, mut d2) = (zero, zero);
                    for p in 0..wo {
                        let d0 = load(p);
                        row_step::<O, I, 0, 3>(&mut acc, &xr, p, [&d0, &d1, &d2]);
                        d2 = d1;
                        d1 = d0;
                    }
                    // the last input column: no output column has it as tap 0; padded column
                    // wo + 1 is the zero border
                    row_step::<O, I, 1, 3>(&mut acc, &xr, wo, [&d1, &d1, &d2]);
                }
                acc
            }

            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn tile<const O: usize, const I: usize, const T: usize>(
                &self,
                ov0: usize,
                xs: [*const f32; I],
                rows: std::ops::Range<usize>,
            ) -> [[[$v; T]; I]; O] {
                let g = self.g;
                let (s, op) = (g.stride, self.op);
                let mut acc = [[[$zero(); T]; I]; O];
                let mut d = self.dyt.add((rows.start * g.wo * op) + ov0 * $lanes);
                for r in rows {
                    let xr: [*const f32; I] = std::array::from_fn(|i| xs[i].add(s * r * self.wp));
                    for c in 0..g.wo {
                        let mut dv = [$zero(); O];
                        for o in 0..O {
                            dv[o] = $load(d.add(o * $lanes));
                        }
                        for i in 0..I {
                            for t in 0..T {
                                let xv = $set1(*xr[i].add(s * c + t));
                                for o in 0..O {
                                    acc[o][i][t] = $fmadd(dv[o], xv, acc[o][i][t]);
                                }
                            }
                        }
                        d = d.add(op);
                    }
                }
                acc
            }
        }

        /// Padded column `p` of a 3×3 stride-1 tile row: the FMAs of taps LO..HI, tap t with
        /// `d[t]`, the dy vectors of output column p − t.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn row_step<const O: usize, const I: usize, const LO: usize, const HI: usize>(
            acc: &mut [[[$v; 3]; I]; O],
            xr: &[*const f32; I],
            p: usize,
            d: [&[$v; O]; 3],
        ) {
            for i in 0..I {
                let xv = $set1(*xr[i].add(p));
                for o in 0..O {
                    for t in LO..HI {
                        acc[o][i][t] = $fmadd(d[t][o], xv, acc[o][i][t]);
                    }
                }
            }
        }
    };
}
