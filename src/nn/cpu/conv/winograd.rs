//! Winograd's F(2×2, 3×3) for the AVX2 padded path's 3×3 stride-1 jobs: the forward pass,
//! the input gradient (the same convolution on dy with flipped, transposed weights) and the
//! inference convolution with its bias, shortcut and ReLU; and for the weight gradient of the
//! same convolutions ([`weight_grad`]).
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
//! Which jobs take this path is [`super::plan`]'s choice. Measured with the single-thread
//! tuning aid (`runner bench --op conv-tune`: batch 32, CPU time, this 2-core AMD EPYC), as
//! the direct kernel's FLOPs over the time: 32 → 32 channels at 16×16 ran 1.2–1.35× and
//! 64 → 64 at 8×8 1.35–1.45× faster than the direct kernel; 16 → 16 at 32×32 0.9–1.0×, so
//! it is left to the direct kernel ([`plan::MIN_CHANNEL_PAIRS`]). The weight gradient ran
//! 1.5–3× faster than the direct one at all three sizes in the same aid; in `runner bench
//! --op conv` (batch 128, 2 threads, 3 alternating runs) 1.3–1.8× at 32 and 64 channels and
//! 1.0–1.1× at 16, so it starts at 16 → 16 ([`plan::MIN_DW_CHANNEL_PAIRS`]).
//!
//! [`plan::MIN_CHANNEL_PAIRS`]: super::plan::MIN_CHANNEL_PAIRS
//! [`plan::MIN_DW_CHANNEL_PAIRS`]: super::plan::MIN_DW_CHANNEL_PAIRS

// Transform loops index several arrays with the same constant bounds.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::geom::ConvGeom;
use super::job::{add_in_order, images_per_run, Job};
use super::plan::{tiles_in_eights, tiles_whole, PAD_OT};
use super::scratch::{pad_image, with_padded_copy};

/// Output channels per register tile (the padded kernel's, so its packed weights unpack the
/// same way).
const OT: usize = PAD_OT;

/// Tiles per block are about this over the input channels (at least 8): a block's transformed
/// input is 16 × channels × tiles floats, 16 KiB, and stays in L1 with the weights of one
/// register tile. At 64 KiB the 16-channel products waited on L2 and ran ~30% slower.
const BLOCK_TILE_CHANNELS: usize = 256;

thread_local! {
    /// This thread's transformed values: a block of one image's input (the forward passes),
    /// or of a block of images' input and dy (the weight gradient).
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A job's transformed weights and tiling.
pub(super) struct WinoJob {
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

impl WinoJob {
    /// The plan for `job`, a padded job that `plan` gave to Winograd's kernel, or None where
    /// it is not a 3×3 stride-1 job on planes with even rows and whole 8-pixel rows (every
    /// CIFAR ResNet's) whose tiles come in eights (`plan` checked; this guards the kernel).
    pub(super) fn new(job: &Job) -> Option<WinoJob> {
        if job.taps.len() != 9 || !tiles_whole(job.ho, job.wo) || !tiles_in_eights(job.ho, job.wo) {
            return None;
        }
        let (ntx, nty) = (job.wo / 2, job.ho / 2);
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
        Some(WinoJob {
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
    /// The CPU must support AVX2 and FMA; `xp` must be laid out as `run_padded` makes it; `out`
    /// must be valid for writes of the image's output planes and `add` for reads of as many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn image(&self, job: &Job, xp: &[f32], pch: usize, (out, add): (*mut f32, Option<*const f32>)) {
        debug_assert!(xp.len() >= self.nin * pch);
        let stride = 2 * self.rows * self.ntx;
        let pos = Transformed::pair_floats(self.nin, stride);
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
                    v: Transformed {
                        v: v.as_mut_ptr(),
                        pos,
                        stride,
                    },
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

/// Where transformed values go: value (position pair pp, channel c, tile t, position of the
/// pair) at `v[pp·pos + c·stride + 2t + position]`.
struct Transformed {
    v: *mut f32,
    pos: usize,
    stride: usize,
}

impl Transformed {
    /// Floats between position pairs for `channels` rows of `stride` floats: the rows rounded
    /// up to whole cache lines (16 floats), plus one line. At 4 KiB apart (as 64 channels ×
    /// 8 tiles are) a transform's 8 stores per tile group would all fall in one L1 set (with
    /// 16 positions 4 KiB apart the forward transform ran ~3× as long as the products).
    fn pair_floats(channels: usize, stride: usize) -> usize {
        (channels * stride).next_multiple_of(16) + 16
    }

    /// The first value of position pair `pp`, channel `c`, tile `t`.
    unsafe fn at(&self, pp: usize, c: usize, t: usize) -> *mut f32 {
        self.v.add(pp * self.pos + c * self.stride + 2 * t)
    }
}

/// The groups of 4 tiles of tile rows `rows` (`ntx` tiles each): (tile index, counted from
/// `first` at the first row, and (tile row, tile column)).
fn tile_groups(ntx: usize, rows: Range<usize>, first: usize) -> impl Iterator<Item = (usize, (usize, usize))> + Clone {
    let ty0 = rows.start;
    rows.flat_map(move |ty| {
        (0..ntx)
            .step_by(4)
            .map(move |tx| (first + (ty - ty0) * ntx + tx, (ty, tx)))
    })
}

/// V = Bᵀ d B for every input channel of one image (`nin` blocks of `pch` floats of its
/// zero-bordered copy `xp`, rows of wo + 2) and every group of 4 tiles `groups` yields (first
/// tile, its (tile row, tile column)): one row of the 4 patches is 10 consecutive padded
/// values c₀..c₉ (tile k reads c₂ₖ..c₂ₖ₊₃), and the three vectors c₀..₇, c₁..₈, c₂..₉ give
/// Bᵀ's four row values of all four tiles in two vectors, each tile's pair in its two lanes:
/// (c₀..₇ − c₂..₉) = (d₀ − d₂, d₁ − d₃), and addsub of the even-lane duplicates of c₂..₉ and
/// c₁..₈ = (d₂ − d₁, d₂ + d₁). The products keep that lane order (positions in pairs
/// (·, 0 | 3) and (·, 2 | 1)), so no value is shuffled into place.
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_input(
    xp: *const f32,
    (nin, pch, wo): (usize, usize, usize),
    groups: impl Iterator<Item = (usize, (usize, usize))> + Clone,
    to: &Transformed,
) {
    let wpd = wo + 2;
    for ci in 0..nin {
        let xc = xp.add(ci * pch);
        for (t, (ty, tx)) in groups.clone() {
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
                _mm256_storeu_ps(to.at(2 * i, ci, t), w03[i]);
                _mm256_storeu_ps(to.at(2 * i + 1, ci, t), w21[i]);
            }
        }
    }
}

/// One block of tile rows of one image.
struct Block<'a> {
    plan: &'a WinoJob,
    job: &'a Job<'a>,
    /// The transformed input.
    v: Transformed,
    /// The block's first tile row and its tile count (a multiple of 8).
    ty0: usize,
    tiles: usize,
    out: *mut f32,
    add: Option<*const f32>,
}

impl Block<'_> {
    /// V for the block's tiles (see [`transform_input`]).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transform_input(&self, xp: *const f32, pch: usize) {
        let ntx = self.plan.ntx;
        let groups = tile_groups(ntx, self.ty0..self.ty0 + self.tiles / ntx, 0);
        transform_input(xp, (self.plan.nin, pch, self.job.wo), groups, &self.v);
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
            let mut xv = self.v.at(pp, 0, t0).cast_const();
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
                xv = xv.add(self.v.stride);
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

/// Blocks of images hold at least this many tiles where [`DW_BLOCK_FLOATS`] allows: each sum
/// of the products is reduced across its lanes and added to dU once per block (~10
/// operations), after a quarter as many FMAs as the block has tiles.
const DW_BLOCK_TILES: usize = 256;

/// The most floats of transformed values (V and E together) in a block of images: one
/// position pair's share, which the products read again for every group of output channels,
/// stays in L2 (blocks of 4 images of 16 → 16 channels at 32×32, 2 MiB, ran slower than
/// blocks of 2).
const DW_BLOCK_FLOATS: usize = 1 << 19;

/// The weight gradient of a 3×3 stride-1 convolution with padding 1 on the AVX2 path that
/// `plan` gave to Winograd's kernel, as dW[o][i][ky][kx], or None where `g` is not one or its
/// planes do not tile as [`WinoJob::new`] requires (`plan` checked; this guards the kernel).
///
/// With M = U ⊙ V per tile and Y = Aᵀ M A, the loss's gradient is dM = A dY Aᵀ (E below), so
/// dU = Σ_tiles E ⊙ V and dW = Gᵀ dU G: the same input transform as the forward pass, and per
/// position a product of the output channels' E with the input channels' V over all tiles of
/// the batch: 16 multiplications per tile and channel pair where the direct weight gradient
/// does 36. The products vectorise over tiles (8 lanes: 4 tiles × a position pair, the
/// forward pass's lane order), so a register tile is 4 output × 3 input channels with 7 loads
/// per 12 FMAs; lanes are summed once per block of images.
///
/// Runs of [`images_per_run`] images are summed in parallel and added in run order, as the
/// direct weight gradient's are, so the result does not depend on the thread count.
pub(super) fn weight_grad(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    if g.k != 3 || g.stride != 1 || !tiles_whole(g.ho, g.wo) {
        return None;
    }
    let per = images_per_run(g.hw());
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        // SAFETY: the op checked that x and dy hold every image; the caller picked the AVX2
        // path, which the CPU supports
        .map(|c| unsafe { du_images(g, x, dy, c * per..((c + 1) * per).min(g.n)) })
        .collect();
    let (nin, nout) = (g.cin, g.cout);
    let du = add_in_order(&partials, 16 * nout * nin);
    // dW = Gᵀ dU G for every channel pair, once for the batch (it is linear)
    let mut dw = vec![0f32; nout * nin * 9];
    dw.par_chunks_mut(nin * 9).enumerate().for_each(|(o, row)| {
        for (i, out) in row.chunks_exact_mut(9).enumerate() {
            let u: [[f32; 4]; 4] =
                std::array::from_fn(|r| std::array::from_fn(|c| du[((4 * r + c) * nout + o) * nin + i]));
            // Gᵀ on a column of 4: (u₀ + ½(u₁ + u₂), ½(u₁ − u₂), ½(u₁ + u₂) + u₃)
            let gt = |a: [f32; 4]| {
                [
                    a[0] + 0.5 * (a[1] + a[2]),
                    0.5 * (a[1] - a[2]),
                    0.5 * (a[1] + a[2]) + a[3],
                ]
            };
            let cols: [[f32; 3]; 4] = std::array::from_fn(|c| gt([u[0][c], u[1][c], u[2][c], u[3][c]]));
            for ky in 0..3 {
                let row = gt([cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]]);
                out[3 * ky..3 * ky + 3].copy_from_slice(&row);
            }
        }
    });
    Some(dw)
}

/// dU of images `imgs` as [position][o][i].
#[target_feature(enable = "avx2,fma")]
unsafe fn du_images(g: &ConvGeom, x: &[f32], dy: &[f32], imgs: Range<usize>) -> Vec<f32> {
    let (nin, nout) = (g.cin, g.cout);
    let (ntx, nty) = (g.wo / 2, g.ho / 2);
    let tiles = ntx * nty;
    let per_block = DW_BLOCK_TILES
        .div_ceil(tiles)
        .min(DW_BLOCK_FLOATS / (16 * (nin + nout) * tiles))
        .max(1);
    // dU as [position][o][i]
    let mut du = vec![0f32; 16 * nout * nin];
    let pch = (g.h + 2) * (g.w + 2);
    with_padded_copy((nin, 1, g.h, g.w), |xp| {
        V.with_borrow_mut(|buf| {
            for first in imgs.clone().step_by(per_block) {
                let count = per_block.min(imgs.end - first);
                // each channel's row: the block's tiles, 2 positions each
                let stride = 2 * count * tiles;
                let (pv, pe) = (
                    Transformed::pair_floats(nin, stride),
                    Transformed::pair_floats(nout, stride),
                );
                if buf.len() < 8 * (pv + pe) {
                    buf.resize(8 * (pv + pe), 0.0);
                }
                let v = Transformed {
                    v: buf.as_mut_ptr(),
                    pos: pv,
                    stride,
                };
                let e = Transformed {
                    v: buf.as_mut_ptr().add(8 * pv),
                    pos: pe,
                    stride,
                };
                for k in 0..count {
                    let img = first + k;
                    let groups = tile_groups(ntx, 0..nty, k * tiles);
                    pad_image(&x[img * nin * g.h * g.w..][..nin * g.h * g.w], g, xp);
                    transform_input(xp.as_ptr(), (nin, pch, g.wo), groups.clone(), &v);
                    transform_dy(dy[img * nout * g.hw()..].as_ptr(), (nout, g.hw(), g.wo), groups, &e);
                }
                dw_products(&v, &e, (nin, nout), stride / 8, &mut du);
            }
        })
    });
    du
}

/// E = A dY Aᵀ for every output channel of one image (`nout` planes of `hw` values of dy, rows
/// of `wo`) and every group of 4 tiles, in the input transform's lane order: a row of the 4
/// tiles is 8 values (a, b) per tile, Aᵀ along it gives positions (a, −b) for the pair
/// (·, 0 | 3) and (a − b, a + b) for (·, 2 | 1), and down the two rows r₀, r₁: r₀, r₀ + r₁,
/// r₀ − r₁, −r₁.
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_dy(
    dy: *const f32,
    (nout, hw, wo): (usize, usize, usize),
    groups: impl Iterator<Item = (usize, (usize, usize))> + Clone,
    to: &Transformed,
) {
    let odd = _mm256_castsi256_ps(_mm256_set1_epi64x(i64::MIN)); // the sign of odd lanes
    let all = _mm256_set1_ps(-0.0);
    for o in 0..nout {
        let plane = dy.add(o * hw);
        for (t, (ty, tx)) in groups.clone() {
            let cols = |r: usize| {
                let v = _mm256_loadu_ps(plane.add((2 * ty + r) * wo + 2 * tx));
                [
                    _mm256_xor_ps(v, odd),
                    _mm256_addsub_ps(_mm256_moveldup_ps(v), _mm256_movehdup_ps(v)),
                ]
            };
            let (r0, r1) = (cols(0), cols(1));
            for pair in 0..2 {
                let rows = [
                    r0[pair],
                    _mm256_add_ps(r0[pair], r1[pair]),
                    _mm256_sub_ps(r0[pair], r1[pair]),
                    _mm256_xor_ps(r1[pair], all),
                ];
                for (i, row) in rows.into_iter().enumerate() {
                    _mm256_storeu_ps(to.at(2 * i + pair, o, t), row);
                }
            }
        }
    }
}

/// dU += Σ_tiles E ⊙ V for one block: per position pair, register tiles of 4 output × 3
/// input channels over the block's `vectors` vectors of 4 tiles, whose even and odd lanes
/// are then summed into the pair's two positions.
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_products(v: &Transformed, e: &Transformed, (nin, nout): (usize, usize), vectors: usize, du: &mut [f32]) {
    for pp in 0..8 {
        let (r, pair) = (pp / 2, pp % 2);
        // the pair's positions (row r; columns 0 | 3 or 2 | 1)
        let at = [4 * r + [0, 2][pair], 4 * r + [3, 1][pair]];
        for o0 in (0..nout).step_by(4) {
            for i0 in (0..nin).step_by(3) {
                let tile = (o0, i0, pp);
                match ((nout - o0).min(4), (nin - i0).min(3)) {
                    (4, 3) => dw_tile::<4, 3>(v, e, tile, vectors, (at, nin, nout), du),
                    (4, 2) => dw_tile::<4, 2>(v, e, tile, vectors, (at, nin, nout), du),
                    (4, _) => dw_tile::<4, 1>(v, e, tile, vectors, (at, nin, nout), du),
                    (no, ni) => {
                        for o in o0..o0 + no {
                            for i in i0..i0 + ni {
                                dw_tile::<1, 1>(v, e, (o, i, pp), vectors, (at, nin, nout), du);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One register tile of [`dw_products`]: output channels o0.., input channels i0.., position
/// pair pp, added to dU at positions `at`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dw_tile<const O: usize, const I: usize>(
    v: &Transformed,
    e: &Transformed,
    (o0, i0, pp): (usize, usize, usize),
    vectors: usize,
    (at, nin, nout): ([usize; 2], usize, usize),
    du: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); I]; O];
    let ep: [*const f32; O] = std::array::from_fn(|o| e.at(pp, o0 + o, 0).cast_const());
    let vp: [*const f32; I] = std::array::from_fn(|i| v.at(pp, i0 + i, 0).cast_const());
    for j in 0..vectors {
        // I values of V held, one E value at a time: with 12 sums that is all 16 registers
        // (holding the 4 E values instead spilled a sum to the stack)
        let xv: [__m256; I] = std::array::from_fn(|i| _mm256_loadu_ps(vp[i].add(8 * j)));
        for o in 0..O {
            let ev = _mm256_loadu_ps(ep[o].add(8 * j));
            for i in 0..I {
                acc[o][i] = _mm256_fmadd_ps(ev, xv[i], acc[o][i]);
            }
        }
    }
    for o in 0..O {
        for i in 0..I {
            // lanes (even, odd) of 4 tiles → the two positions' sums
            let a = acc[o][i];
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut two = [0f32; 4];
            _mm_storeu_ps(two.as_mut_ptr(), s);
            for (q, &p) in at.iter().enumerate() {
                du[(p * nout + o0 + o) * nin + i0 + i] += two[q];
            }
        }
    }
}
