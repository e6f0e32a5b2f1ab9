//! Winograd's F(2×2, 3×3) for the AVX2 padded path's 3×3 stride-1 jobs: the forward pass,
//! the input gradient (the same convolution on dy with flipped, transposed weights) and the
//! inference convolution with its bias, shortcut and ReLU.
//!
//! Each 2×2 block of output pixels (a *tile*) of one channel is
//! Aᵀ [Σ_in (G g Gᵀ) ⊙ (Bᵀ d B)] A, with d the 4×4 input patch of each input channel and g its
//! 3×3 weights (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): 16
//! multiplications per tile and channel pair where the direct convolution does 36, so 2.25×
//! fewer FMAs, at the price of the transforms (adds and shuffles; on Zen 3 they have pipes of
//! their own) and of rounding that differs from the direct sum's by a few ulps.
//!
//! Per image, on the padded path's zero-bordered copy: the transformed weights U (once per
//! job) and, block of tile rows by block, the transformed input V, in vectors of 4 tiles × a
//! pair of positions (kept in L1); then, per register tile of 6 output channels × 8 tiles,
//! the 8 position pairs' products Σ_in U·V (the padded kernel's register tile, with the input
//! channels as its reduction) into a small buffer, and the output transform, bias, added
//! values and ReLU as the pixels are stored.
//!
//! Measured with the single-thread tuning aid (batch 32, CPU time, this 2-core AMD EPYC), as
//! the direct kernel's FLOPs over the time: 32 → 32 channels at 16×16 ran 1.2–1.35× and
//! 64 → 64 at 8×8 1.35–1.45× faster than the direct kernel; 16 → 16 at 32×32 0.9–1.0×, so
//! it is left to the direct kernel ([`MIN_CHANNEL_PAIRS`]).

// Transform loops index several arrays with the same constant bounds.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::{Cell, RefCell};

use rayon::prelude::*;

use super::{Job, PAD_OT};

/// Output channels per register tile (the padded kernel's, so its packed weights unpack the
/// same way).
const OT: usize = PAD_OT;

/// Tiles per block are about this over the input channels (at least 8): a block's transformed
/// input is 16 × channels × tiles floats, 16 KiB, and stays in L1 with the weights of one
/// register tile. At 64 KiB the 16-channel products waited on L2 and ran ~30% slower.
const BLOCK_TILE_CHANNELS: usize = 256;

/// The fewest input × output channel pairs worth it. The transforms cost ~44 operations per 4
/// tiles per input channel and ~34 per output channel, the products 16 · in · out / 8 FMAs:
/// at 16 → 16 channels the two took about as long as the direct kernel (measured: 0.9–1.0×),
/// at 32 → 32 1.2–1.35× less, at 64 → 64 1.35–1.45× less (single thread, batch 32).
const MIN_CHANNEL_PAIRS: usize = 512;

thread_local! {
    /// Set by [`direct`]: jobs planned on this thread use the direct kernel.
    static OFF: Cell<bool> = const { Cell::new(false) };
    /// This thread's transformed-input block.
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the Winograd path switched off for the jobs it plans on this thread (the
/// tests and the tuning aid compare the two paths).
#[cfg(test)]
pub(super) fn direct<R>(f: impl FnOnce() -> R) -> R {
    let was = OFF.replace(true);
    let r = f();
    OFF.set(was);
    r
}

/// A job's transformed weights and tiling.
pub(super) struct Plan {
    /// G g Gᵀ as [output tile][position pair][input channel][OT channels][2 positions]
    /// (channels past `nout` zero); pairs (i, 0 | 3) and (i, 2 | 1) for each row i.
    u: Vec<f32>,
    nin: usize,
    nout: usize,
    /// Tiles per row and tile rows of the output plane.
    ntx: usize,
    nty: usize,
    /// Tile rows per block.
    rows: usize,
}

impl Plan {
    /// The plan for `job`, or None where it is not a padded 3×3 stride-1 job on planes with
    /// even rows and whole 8-pixel rows (every CIFAR ResNet's), or Winograd is switched off.
    pub(super) fn new(job: &Job) -> Option<Plan> {
        if OFF.get() || !job.padded || job.taps.len() != 9 || !job.ho.is_multiple_of(2) || !job.wo.is_multiple_of(8) {
            return None;
        }
        if job.nin * job.nout < MIN_CHANNEL_PAIRS {
            return None;
        }
        let (ntx, nty) = (job.wo / 2, job.ho / 2);
        if !(ntx * nty).is_multiple_of(8) {
            return None;
        }
        // where each (dy, dx) of the 3×3 window is in the job's taps (its weights' order)
        let mut at = [usize::MAX; 9];
        for (j, t) in job.taps.iter().enumerate() {
            if t.plane != 0 || t.dy.abs() > 1 || t.dx.abs() > 1 {
                return None;
            }
            let k = ((t.dy + 1) * 3 + t.dx + 1) as usize;
            if at[k] != usize::MAX {
                return None;
            }
            at[k] = j;
        }
        let (nin, nout) = (job.nin, job.nout);
        let tiles = nout.div_ceil(OT);
        let mut u = vec![0f32; tiles * 16 * nin * OT];
        // in parallel over output tiles (on one thread, with the other idle, ~0.8% of a ResNet-56
        // training step)
        u.par_chunks_mut(16 * nin * OT).enumerate().for_each(|(ot, part)| {
            let wt = &job.wp[ot * 9 * nin * OT..];
            for c in 0..(nout - ot * OT).min(OT) {
                for i in 0..nin {
                    let mut g = [[0f32; 3]; 3];
                    for (k, &j) in at.iter().enumerate() {
                        g[k / 3][k % 3] = wt[(j * nin + i) * OT + c];
                    }
                    let ug = transform_weights(&g);
                    for (pp, (r, j)) in (0..4).flat_map(|r| [(r, [0, 3]), (r, [2, 1])]).enumerate() {
                        let at = ((pp * nin + i) * OT + c) * 2;
                        part[at] = ug[r][j[0]];
                        part[at + 1] = ug[r][j[1]];
                    }
                }
            }
        });
        // whole tile rows, a multiple of 8 tiles (ntx is a multiple of 4)
        let mut rows = (BLOCK_TILE_CHANNELS / nin / ntx).max(1);
        if !(rows * ntx).is_multiple_of(8) {
            rows += 1;
        }
        Some(Plan {
            u,
            nin,
            nout,
            ntx,
            nty,
            rows,
        })
    }

    /// One image: `xp` its zero-bordered copy (blocks of `pch` floats per channel, rows of
    /// wo + 2), `out` and `add` its first output plane and the values to add there.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `xp` must be laid out as `run_job` makes it; `out`
    /// must be valid for writes of the image's output planes and `add` for reads of as many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn image(&self, job: &Job, xp: &[f32], pch: usize, (out, add): (*mut f32, Option<*const f32>)) {
        debug_assert!(xp.len() >= self.nin * pch);
        let stride = 2 * self.rows * self.ntx;
        // position pairs a cache line more than a power of two apart: 4 KiB apart (as 64
        // channels × 8 tiles are), the transform's 8 stores per tile group would all fall in
        // one L1 set (with 16 positions 4 KiB apart it ran ~3× as long as the products)
        let pos = (self.nin * stride).next_multiple_of(16) + 16;
        V.with_borrow_mut(|v| {
            if v.len() < 8 * pos {
                v.resize(8 * pos, 0.0);
            }
            let mut ty0 = 0;
            while ty0 < self.nty {
                let tiles = self.rows.min(self.nty - ty0) * self.ntx;
                let b = Block {
                    plan: self,
                    job,
                    v: v.as_mut_ptr(),
                    pos,
                    stride,
                    ty0,
                    tiles,
                    out,
                    add,
                };
                b.transform_input(xp.as_ptr(), pch);
                b.products();
                ty0 += self.rows;
            }
        });
    }
}

/// G g Gᵀ for one 3×3 kernel g (rows ky, columns kx), G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
fn transform_weights(g: &[[f32; 3]; 3]) -> [[f32; 4]; 4] {
    let gv = |a: [f32; 3]| [a[0], 0.5 * (a[0] + a[1] + a[2]), 0.5 * (a[0] - a[1] + a[2]), a[2]];
    let cols: [[f32; 4]; 3] = std::array::from_fn(|kx| gv([g[0][kx], g[1][kx], g[2][kx]]));
    std::array::from_fn(|r| gv([cols[0][r], cols[1][r], cols[2][r]]))
}

/// One block of tile rows of one image.
struct Block<'a> {
    plan: &'a Plan,
    job: &'a Job<'a>,
    /// The transformed input: [position pair][input channel][tile][2 positions].
    v: *mut f32,
    /// Floats between position pairs and between input channels of `v`.
    pos: usize,
    stride: usize,
    /// The block's first tile row and its tile count (a multiple of 8).
    ty0: usize,
    tiles: usize,
    out: *mut f32,
    add: Option<*const f32>,
}

impl Block<'_> {
    /// The block's groups of 4 tiles: (first tile, its (tile row, tile column)).
    fn groups(&self) -> impl Iterator<Item = (usize, (usize, usize))> + '_ {
        let ntx = self.plan.ntx;
        (0..self.tiles / ntx).flat_map(move |r| (0..ntx).step_by(4).map(move |tx| (r * ntx + tx, (self.ty0 + r, tx))))
    }

    /// V = Bᵀ d B for every tile and input channel, 4 tiles at a time: one row of the 4
    /// patches is 10 consecutive padded values c₀..c₉ (tile k reads c₂ₖ..c₂ₖ₊₃), and the three
    /// vectors c₀..₇, c₁..₈, c₂..₉ give Bᵀ's four row values of all four tiles in two
    /// vectors, each tile's pair in its two lanes: (c₀..₇ − c₂..₉) = (d₀ − d₂, d₁ − d₃), and
    /// addsub of the even-lane duplicates of c₂..₉ and c₁..₈ = (d₂ − d₁, d₂ + d₁). The
    /// products keep that lane order (positions in pairs (·, 0 | 3) and (·, 2 | 1)), so no
    /// value is shuffled into place.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transform_input(&self, xp: *const f32, pch: usize) {
        let (nin, wpd) = (self.plan.nin, self.job.wo + 2);
        for ci in 0..nin {
            let xc = xp.add(ci * pch);
            for (t, (ty, tx)) in self.groups() {
                let mut r03 = [_mm256_setzero_ps(); 4];
                let mut r21 = [_mm256_setzero_ps(); 4];
                for k in 0..4 {
                    let row = xc.add((2 * ty + k) * wpd + 2 * tx);
                    let (a, c, b) = (
                        _mm256_loadu_ps(row),
                        _mm256_loadu_ps(row.add(1)),
                        _mm256_loadu_ps(row.add(2)),
                    );
                    r03[k] = _mm256_sub_ps(a, b);
                    r21[k] = _mm256_addsub_ps(_mm256_moveldup_ps(b), _mm256_moveldup_ps(c));
                }
                // Bᵀ down the columns: rows d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃
                let down = |r: [__m256; 4]| {
                    [
                        _mm256_sub_ps(r[0], r[2]),
                        _mm256_add_ps(r[1], r[2]),
                        _mm256_sub_ps(r[2], r[1]),
                        _mm256_sub_ps(r[1], r[3]),
                    ]
                };
                let (w03, w21) = (down(r03), down(r21));
                for i in 0..4 {
                    let at = |pair: usize| self.v.add((2 * i + pair) * self.pos + ci * self.stride + 2 * t);
                    _mm256_storeu_ps(at(0), w03[i]);
                    _mm256_storeu_ps(at(1), w21[i]);
                }
            }
        }
    }

    /// Every output tile of 6 channels × 8 tiles (fewer channels at the end).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn products(&self) {
        for ot in 0..self.plan.nout.div_ceil(OT) {
            let nvalid = (self.plan.nout - ot * OT).min(OT);
            for t in (0..self.tiles).step_by(8) {
                match nvalid {
                    5.. => self.tile::<6>(ot, t, nvalid),
                    3.. => self.tile::<4>(ot, t, nvalid),
                    _ => self.tile::<2>(ot, t, nvalid),
                }
            }
        }
    }

    /// Output tile `ot` × tiles t0..t0 + 8 (two vectors of 4 tiles × 2 positions): the 8
    /// position pairs' Σ_in U·V, then Aᵀ M A per tile, A = [1 0; 1 1; 1 −1; 0 −1], and the
    /// epilogue.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const C: usize>(&self, ot: usize, t0: usize, nvalid: usize) {
        let nin = self.plan.nin;
        let m: [[[__m256; 2]; C]; 8] = std::array::from_fn(|pp| {
            let mut acc = [[_mm256_setzero_ps(); 2]; C];
            let mut xv = self.v.add(pp * self.pos + 2 * t0).cast_const();
            let mut wj = self.plan.u.as_ptr().add((ot * 8 + pp) * nin * OT * 2);
            for _ in 0..nin {
                let x = [_mm256_loadu_ps(xv), _mm256_loadu_ps(xv.add(8))];
                for c in 0..C {
                    // the channel's weights for the pair's two positions, in every lane pair
                    let wv = _mm256_castpd_ps(_mm256_broadcast_sd(&*wj.add(2 * c).cast::<f64>()));
                    for q in 0..2 {
                        acc[c][q] = _mm256_fmadd_ps(x[q], wv, acc[c][q]);
                    }
                }
                wj = wj.add(2 * OT);
                xv = xv.add(self.stride);
            }
            acc
        });
        let job = self.job;
        let at: [(usize, usize); 2] = std::array::from_fn(|q| {
            let t = t0 + 4 * q;
            (self.ty0 + t / self.plan.ntx, t % self.plan.ntx)
        });
        // swaps the two lanes of each pair
        let swap = |v| _mm256_permute_ps::<0b1011_0001>(v);
        for c in 0..nvalid {
            let ch = ot * OT + c;
            let bias = job.bias.map(|b| _mm256_set1_ps(b[ch]));
            for q in 0..2 {
                // per input row i, lanes (m₁ − m₂ − m₃, m₀ + m₁ + m₂) of each tile: Aᵀ along the row
                let z: [__m256; 4] = std::array::from_fn(|i| {
                    let (a, b) = (m[2 * i][c][q], m[2 * i + 1][c][q]); // (m₀, m₃), (m₂, m₁)
                    _mm256_addsub_ps(_mm256_addsub_ps(swap(b), b), swap(a))
                });
                // then down the columns; the swap puts column 0 first
                let rows = [
                    swap(_mm256_add_ps(_mm256_add_ps(z[0], z[1]), z[2])),
                    swap(_mm256_sub_ps(_mm256_sub_ps(z[1], z[2]), z[3])),
                ];
                let (ty, tx) = at[q];
                for (r, mut val) in rows.into_iter().enumerate() {
                    let o = ch * job.out_ch + (2 * ty + r) * job.wo + 2 * tx;
                    if let Some(b) = bias {
                        val = _mm256_add_ps(val, b);
                    }
                    if let Some(a) = self.add {
                        val = _mm256_add_ps(val, _mm256_loadu_ps(a.add(o)));
                    }
                    if job.relu {
                        val = _mm256_max_ps(val, _mm256_setzero_ps());
                    }
                    _mm256_storeu_ps(self.out.add(o), val);
                }
            }
        }
    }
}
