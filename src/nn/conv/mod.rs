//! Fast CPU 2-D convolution: a Candle custom op with its own forward, input-gradient and
//! weight-gradient kernels, for the shapes CIFAR ResNets are made of (3×3 padding 1 and 1×1
//! padding 0, stride 1 or 2, f32). Everything else goes to Candle's own `conv2d`.
//!
//! Why not Candle's: on the CPU it im2cols on one thread, its input gradient is a loop-based
//! `conv_transpose2d` and its weight gradient a convolution with a reduction as long as the
//! batch, which made a ResNet-20 train ~13× slower than PyTorch.
//!
//! How: activations stay NCHW. A kernel vectorises over 16 consecutive pixels of one channel
//! plane (a "pixel vector"), holds a tile of 3 pixel vectors × 8 output channels in registers,
//! and walks a list of *taps*: (input plane, flat offset) pairs whose out-of-image lanes are
//! switched off by a per-tap lane mask, so padding costs neither a branch nor a padded copy.
//! A stride-2 convolution is turned into a stride-1 one over the four even/odd row/column
//! *phase planes* of its input, each the size of the output; the same tap-list kernel then
//! serves the forward pass, the input gradient (the output gradient convolved with the
//! transposed weights and negated tap offsets, one phase plane at a time) and, with a
//! different inner loop, the weight gradient on the plain-Rust path. On AVX2, where masks
//! would take registers the accumulators need, planes whose rows are whole 8-pixel vectors
//! (every CIFAR shape) are instead read from a zero-bordered per-image copy with no masks at
//! all (`avx2::fwd_padded`); 3×3 stride-1 jobs with enough channels run there as Winograd's
//! F(2×2, 3×3), 2.25× fewer FMAs (`winograd`), and so does their weight gradient. The other
//! SIMD weight gradients vectorise over output channels instead, on a pixel-major copy of dy
//! and a zero-bordered copy of x (`avx512::dw_chunk`, `avx2::dw_chunk`). Either way runs of a
//! fixed number of images are summed in parallel and their partial sums added in run order,
//! so results do not depend on the thread count.
//!
//! The work is split over images (and output-channel tiles) with rayon, finely enough that a
//! thread the host slows down hands work to the others. Kernels exist for AVX-512 (F + VL),
//! AVX2 + FMA and plain Rust, picked at run time; the tests force each one the machine has. Layout: activations (N, C, H, W) and weights
//! (out, in, k, k) as PyTorch has them; weights are repacked per call (tiny), stride-2 inputs
//! are split into phase planes per call (one pass over x).

#[macro_use]
mod dw_tiles;
mod avx2;
mod avx512;
pub mod bench;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod winograd;

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use bench::bench_report;

/// `conv2d(x, w)` with no bias: x (N, C_in, H, W), w (C_out, C_in, k, k) → (N, C_out, H', W').
///
/// The fast op handles f32 tensors on the CPU with 3×3 kernels and padding 1, or 1×1 kernels
/// and padding 0, at stride 1 or 2; anything else is passed to Candle's `conv2d` (the same
/// values, more slowly).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if super::reference_ops() {
        return conv2d_slow(x, w, stride, padding);
    }
    conv2d_with(x, w, stride, padding, Isa::detect())
}

/// Candle's own convolution (`x.conv2d(w, padding, stride, 1, 1)`): the reference the fast op
/// is tested against.
pub fn conv2d_slow(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// `relu?(conv2d(x, w) + bias (+ add))`, bias (C_out) and `add` a tensor of the output's
/// shape, in one pass: the kernels add the bias and `add` and apply the ReLU as they store
/// each value. For inference with a BatchNorm folded into the weights and bias (and a residual
/// unit's shortcut as `add`); the result carries no gradient. Shapes the fast op does not
/// handle go through Candle's ops (the same values up to rounding).
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    add: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    let cout = w.dim(0)?;
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let bias_fits = bias.dims() == [cout] && f32_cpu(bias);
    let fast = match super::reference_ops() || !bias_fits {
        true => None,
        false => plan(x, w, stride, padding, Isa::detect())?,
    };
    let fast = fast.filter(|op| add.is_none_or(|a| f32_cpu(a) && a.dims4().ok() == Some(op.out_dims())));
    let Some(conv) = fast else {
        let mut y = conv2d_slow(x, w, stride, padding)?.broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        if let Some(a) = add {
            y = (y + a)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    };
    let op = BiasConvOp {
        conv,
        bias: bias.to_vec1::<f32>()?,
        relu,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match add {
        Some(a) => x.apply_op3_no_bwd(&w, &a.contiguous()?, &op),
        None => x.apply_op2_no_bwd(&w, &op),
    }
}

fn conv2d_with(x: &Tensor, w: &Tensor, stride: usize, padding: usize, isa: Isa) -> Result<Tensor> {
    match plan(x, w, stride, padding, isa)? {
        Some(op) => x.contiguous()?.apply_op2(&w.contiguous()?, op),
        None => conv2d_slow(x, w, stride, padding),
    }
}

/// The fast op for `conv2d(x, w)`, or None where Candle's `conv2d` must run instead.
pub(super) fn plan(x: &Tensor, w: &Tensor, stride: usize, padding: usize, isa: Isa) -> Result<Option<ConvOp>> {
    let op = plan_dims(x.dims4()?, w, stride, padding, isa)?;
    Ok(op.filter(|_| x.device().is_cpu() && x.dtype() == DType::F32))
}

/// [`plan`] for an f32 CPU input of dimensions `x`.
pub(super) fn plan_dims(
    x: (usize, usize, usize, usize),
    w: &Tensor,
    stride: usize,
    padding: usize,
    isa: Isa,
) -> Result<Option<ConvOp>> {
    let (n, cin, h, wd) = x;
    let (cout, wcin, k, kw) = w.dims4()?;
    if wcin != cin {
        candle_core::bail!(
            "conv2d: input has {cin} channels but the weight {:?} expects {wcin}",
            w.dims()
        );
    }
    let fast_shape = k == kw && ((k == 3 && padding == 1) || (k == 1 && padding == 0)) && (stride == 1 || stride == 2);
    let fast = fast_shape && w.device().is_cpu() && w.dtype() == DType::F32 && n * cin * h * wd * cout > 0;
    Ok(fast.then(|| ConvOp {
        g: Geom::new(n, cin, cout, h, wd, k, stride),
        isa,
    }))
}

/// The instruction set a kernel is written for; the tests force each one this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The fastest one this CPU supports.
    pub(super) fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Scalar)
    }

    fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Output channels per register tile (the width weights are packed to).
    fn out_tile(self) -> usize {
        match self {
            Isa::Scalar | Isa::Avx512 => 8,
            Isa::Avx2 => 4,
        }
    }
}

/// The shape of one convolution. Every kernel works on planes of the output's size
/// (`ho` × `wo`): for stride 1 the input itself, for stride 2 its phase planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    ho: usize,
    wo: usize,
}

/// One kernel tap in plane coordinates: weight index `t` = ky·k + kx reads input plane `plane`
/// at (row + dy, column + dx) of the output position.
#[derive(Debug, Clone, Copy)]
struct Tap {
    t: usize,
    plane: usize,
    dy: isize,
    dx: isize,
}

impl Geom {
    fn new(n: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize, stride: usize) -> Geom {
        // (h + 2p − k)/s + 1 is ⌈h/s⌉ for both (k, p) = (3, 1) and (1, 0)
        Geom {
            n,
            cin,
            cout,
            h,
            w,
            k,
            stride,
            ho: h.div_ceil(stride),
            wo: w.div_ceil(stride),
        }
    }

    fn hw(&self) -> usize {
        self.ho * self.wo
    }

    /// Planes per input channel: 1 at stride 1; at stride 2 the phases (even/odd row × even/odd
    /// column, index 2·py + px), of which a 1×1 kernel only ever reads the even/even one.
    fn planes(&self) -> usize {
        if self.stride == 1 || self.k == 1 {
            1
        } else {
            4
        }
    }

    fn taps(&self) -> Vec<Tap> {
        let pad = (self.k / 2) as isize;
        let mut taps = Vec::with_capacity(self.k * self.k);
        for ky in 0..self.k {
            for kx in 0..self.k {
                // input row = s·r + ky − pad; at stride 2 that is phase (ky − pad) mod 2, row r + ⌊(ky − pad)/2⌋
                let (ry, rx) = (ky as isize - pad, kx as isize - pad);
                let tap = if self.stride == 1 {
                    Tap {
                        t: ky * self.k + kx,
                        plane: 0,
                        dy: ry,
                        dx: rx,
                    }
                } else {
                    Tap {
                        t: ky * self.k + kx,
                        plane: (ry.rem_euclid(2) * 2 + rx.rem_euclid(2)) as usize,
                        dy: ry.div_euclid(2),
                        dx: rx.div_euclid(2),
                    }
                };
                taps.push(tap);
            }
        }
        taps
    }
}

/// A tap as the kernels see it: `off` is added to the pixel index within an input channel's
/// block of planes; `kind` picks the lane masks for its (dy, dx).
#[derive(Debug, Clone, Copy)]
struct KTap {
    off: isize,
    plane: usize,
    kind: usize,
    dy: isize,
    dx: isize,
}

fn ktap(hw: usize, wo: usize, plane: usize, dy: isize, dx: isize) -> KTap {
    KTap {
        off: (plane * hw) as isize + dy * wo as isize + dx,
        plane,
        kind: mask_kind(dy, dx),
        dy,
        dx,
    }
}

fn mask_kind(dy: isize, dx: isize) -> usize {
    ((dy + 1) * 3 + (dx + 1)) as usize
}

/// The centre tap's masks: which lanes of a pixel vector lie inside the plane.
const CENTRE: usize = 4;

/// How many floats `p` lies past a 64-byte boundary.
fn misalignment(p: *const f32) -> usize {
    (p as usize / 4) % 16
}

/// For each (dy, dx) in {−1, 0, 1}² and each 16-pixel vector of a `ho` × `wo` plane, the lanes
/// whose pixel is inside the plane and whose neighbour at (dy, dx) is too.
///
/// Vector v covers pixels 16·v − `shift` ..: a grid shifted so that the loads a kernel makes
/// most are 64-byte aligned (a misaligned 64-byte load straddles two cache lines and costs two
/// loads; the weight gradient ran ~1.4× faster on aligned buffers).
struct Masks {
    nv: usize,
    shift: usize,
    bits: Vec<u16>,
}

impl Masks {
    fn new(ho: usize, wo: usize, shift: usize) -> Masks {
        let hw = ho * wo;
        let nv = (hw + shift).div_ceil(16);
        let mut bits = vec![0u16; 9 * nv];
        for dy in -1..=1isize {
            for dx in -1..=1isize {
                let kind = mask_kind(dy, dx);
                for q in 0..hw {
                    let (r, c) = ((q / wo) as isize, (q % wo) as isize);
                    if (0..ho as isize).contains(&(r + dy)) && (0..wo as isize).contains(&(c + dx)) {
                        let l = q + shift;
                        bits[kind * nv + l / 16] |= 1 << (l % 16);
                    }
                }
            }
        }
        Masks { nv, shift, bits }
    }

    /// The masks a job's kernel reads: none on zero-bordered copies (see [`padded`]; making
    /// them anyway took ~0.2% of a training step, on one thread), else masks whose grid aligns
    /// the vectors of planes starting at `p` every `stride` floats (no shift when the planes'
    /// alignments differ).
    fn for_job(padded: bool, ho: usize, wo: usize, p: *const f32, stride: usize) -> Masks {
        if padded {
            return Masks {
                nv: 0,
                shift: 0,
                bits: Vec::new(),
            };
        }
        let shift = if stride.is_multiple_of(16) { misalignment(p) } else { 0 };
        Masks::new(ho, wo, shift)
    }

    #[inline(always)]
    fn get(&self, kind: usize, v: usize) -> u16 {
        self.bits[kind * self.nv + v]
    }
}

/// One forward-style convolution: out[o][q] = Σ_taps Σ_i W[o][i][tap] · src[i][q + tap.off],
/// over every image, for planes of `ho` × `wo` pixels.
struct Job<'a> {
    src: &'a [f32],
    /// Floats between images and between input channels of `src`.
    src_img: usize,
    src_ch: usize,
    nin: usize,
    taps: &'a [KTap],
    /// Weights packed by [`pack`]: [out tile][tap][input channel][out_tile lanes].
    wp: &'a [f32],
    nout: usize,
    out_tile: usize,
    out_img: usize,
    out_ch: usize,
    ho: usize,
    wo: usize,
    masks: &'a Masks,
    /// Added to each output channel's values as they are stored, then `relu` applied
    /// (inference with BatchNorm folded in, see [`conv2d_bias`]).
    bias: Option<&'a [f32]>,
    /// Added to the values as they are stored (after the bias, before the ReLU): values laid
    /// out as the output (a residual unit's shortcut in inference, the shortcut's gradient in
    /// a unit's input gradient).
    add: Option<&'a [f32]>,
    relu: bool,
    /// Run image by image on a zero-bordered copy of each image (see [`padded`]).
    padded: bool,
}

/// Whether a job runs on zero-bordered copies of its images: the AVX2 kernel for planes whose
/// rows are whole 8-pixel vectors. Without lane masks it has registers for 2 pixel vectors ×
/// 6 output channels of accumulators instead of 2 × 4, and the copy's planes
/// ((h + 2) × (w + 2) floats) never lie a multiple of 4 KiB apart, where the loads of one
/// input value per channel would all map to the same L1 set (a 32×32 plane is exactly 4 KiB).
fn padded(isa: Isa, wo: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa == Isa::Avx2 && wo.is_multiple_of(8)
}

/// Output channels per tile of the padded kernel (`avx2::fwd_padded`).
const PAD_OT: usize = 6;

/// The output-channel tile (packing width) of a job's kernel.
fn out_tile(isa: Isa, padded: bool) -> usize {
    if padded {
        PAD_OT
    } else {
        isa.out_tile()
    }
}

/// The weight gradient: dW[o][i][t] = Σ_images Σ_q dy[o][q] · src[i][q + taps[t].off].
struct DwJob<'a> {
    src: &'a [f32],
    src_img: usize,
    src_ch: usize,
    nin: usize,
    dy: &'a [f32],
    /// Floats between images and between output channels of `dy`.
    dy_img: usize,
    dy_ch: usize,
    /// Output channels of `dy`, each one plane.
    nout: usize,
    taps: &'a [KTap],
    ho: usize,
    wo: usize,
}

/// A pointer the threads of one job write through, each to its own disjoint part.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Runs a [`Job`] over (image, output tile) units in parallel; `out` has room for every image.
/// Every value of every output plane is written, so `out` need not be initialised.
fn run_job(job: &Job, isa: Isa, out: &mut [MaybeUninit<f32>], n: usize) {
    let tiles = job.nout.div_ceil(job.out_tile);
    let need = if n == 0 {
        0
    } else {
        (n - 1) * job.out_img + (job.nout - 1) * job.out_ch + job.ho * job.wo
    };
    assert!(out.len() >= need, "conv: output buffer too small");
    assert!(job.add.is_none_or(|a| a.len() >= need), "conv: too few values to add");
    let ptr = OutPtr(out.as_mut_ptr().cast::<f32>());
    #[cfg(target_arch = "x86_64")]
    if job.padded {
        let (hw, wpd) = (job.ho * job.wo, job.wo + 2);
        let pps = (job.ho + 2) * wpd;
        let planes = job.src_ch / hw;
        let pch = planes * pps;
        // tap offsets within a channel's padded planes
        let offs: Vec<isize> = job
            .taps
            .iter()
            .map(|t| (t.plane * pps) as isize + t.dy * wpd as isize + t.dx)
            .collect();
        // image by image, so that a thread the host slows down hands its share to the others
        // (with one run of images per thread, a busy host left one thread idle for up to half
        // the op); each thread's copy buffer is kept between images and calls
        let wino = winograd::Plan::new(job);
        (0..n).into_par_iter().for_each(|img| {
            with_padded_copy((job.nin, planes, job.ho, job.wo), |xp| {
                let src = &job.src[img * job.src_img..];
                for (c, block) in xp.chunks_exact_mut(pch).enumerate() {
                    for (pl, plane) in block.chunks_exact_mut(pps).enumerate() {
                        let from = &src[c * job.src_ch + pl * hw..][..hw];
                        for (r, row) in from.chunks_exact(job.wo).enumerate() {
                            plane[(r + 1) * wpd + 1..][..job.wo].copy_from_slice(row);
                        }
                    }
                }
                let p = ptr;
                let at = img * job.out_img;
                let add = job.add.map(|a| a[at..].as_ptr());
                // SAFETY: as below; each image's planes are written by this unit alone
                match &wino {
                    Some(w) => unsafe { w.image(job, xp, pch, (p.0.add(at), add)) },
                    None => {
                        for tile in 0..tiles {
                            unsafe { avx2::fwd_padded(job, xp, pch, &offs, tile, (p.0.add(at), add)) };
                        }
                    }
                }
            })
        });
        return;
    }
    (0..n * tiles).into_par_iter().for_each(|u| {
        let (img, tile) = (u / tiles, u % tiles);
        let p = ptr;
        // SAFETY: units write disjoint (image, channel) planes, all inside `out` (checked above)
        unsafe {
            match isa {
                Isa::Scalar => scalar::fwd_unit(job, img, tile, p.0),
                Isa::Avx2 => avx2::fwd_unit(job, img, tile, p.0),
                Isa::Avx512 => avx512::fwd_unit(job, img, tile, p.0),
            }
        }
    });
}

/// Images per partial sum of the weight gradient for planes of `hw` pixels: about
/// [`DW_PIXELS`] output pixels, so that a run's work is ~hw·DW_PIXELS/hw times its partial
/// sum's size (zeroed, then added up), within 4..=16 images.
fn dw_images(hw: usize) -> usize {
    (DW_PIXELS / hw.max(1)).clamp(4, 16)
}

const DW_PIXELS: usize = 2048;

/// The weight gradient summed over all images: partial sums over runs of [`dw_images`]
/// images, computed in parallel (more runs than threads, so that a thread the host slows down
/// hands runs to the others) and added in run order, so the result does not depend on the
/// thread count.
fn run_dw(g: &Geom, job: &DwJob, isa: Isa, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let n = g.n;
    let kk = job.taps.len();
    // the SIMD kernels' partial sums are [out vector][in][tap][lane]
    let lanes = match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Scalar => 1,
    };
    let len = job.nout.next_multiple_of(lanes) * job.nin * kk;
    let per = dw_images(g.hw());
    let chunks = n.div_ceil(per).max(1);
    let bounds = |c: usize| (c * per, ((c + 1) * per).min(n));
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let (a, b) = bounds(c);
            match isa {
                // SAFETY: x and dy hold every image (the op checked their lengths)
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::dw_chunk(g, x, dy, a..b) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::dw_chunk(g, x, dy, a..b) },
                _ => {
                    let mut part = vec![0f32; len];
                    scalar::dw_images(job, a..b, &mut part);
                    part
                }
            }
        })
        .collect();
    let total = add_in_order(&partials, len);
    if lanes == 1 {
        return total;
    }
    // [o vector][i][t][lane] → [o][i][t]
    let ikk = job.nin * kk;
    let mut dw = vec![0f32; job.nout * ikk];
    dw.par_chunks_exact_mut(ikk).enumerate().for_each(|(o, row)| {
        for (it, v) in row.iter_mut().enumerate() {
            *v = total[((o / lanes) * ikk + it) * lanes + o % lanes];
        }
    });
    dw
}

/// The sum of `partials` (each `len` floats), added in their order, in parallel over pieces
/// of the sum (on one thread, with the reordering after it, ~0.4% of a training step).
fn add_in_order(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    total.par_chunks_mut(4096).enumerate().for_each(|(k, t)| {
        for p in partials {
            t.iter_mut().zip(&p[k * 4096..]).for_each(|(t, v)| *t += v);
        }
    });
    total
}

/// Packs weights for a [`Job`] over the taps `ts` (weight indices): [out tile][j][in][lane].
/// `transpose` swaps the roles of w's two channel axes (the input gradient's weights).
fn pack(w: &[f32], g: &Geom, ts: &[usize], transpose: bool, ot: usize) -> Vec<f32> {
    let kk = g.k * g.k;
    let (nout, nin) = if transpose { (g.cin, g.cout) } else { (g.cout, g.cin) };
    let mut wp = vec![0f32; nout.div_ceil(ot) * ts.len() * nin * ot];
    // in parallel over output tiles: on one thread this was ~0.3% of a training step
    wp.par_chunks_mut(ts.len() * nin * ot)
        .enumerate()
        .for_each(|(tile, part)| {
            for o in tile * ot..((tile + 1) * ot).min(nout) {
                for (j, &t) in ts.iter().enumerate() {
                    for i in 0..nin {
                        let (co, ci) = if transpose { (i, o) } else { (o, i) };
                        part[(j * nin + i) * ot + o % ot] = w[(co * g.cin + ci) * kk + t];
                    }
                }
            }
        });
    wp
}

/// The stride-2 input as phase planes: [n][c][plane][ho·wo], plane (py, px) at (r, c) holding
/// x[2r + py][2c + px], or 0 past the edge (the convolution's own zero padding). They are
/// written `misalign` floats past a 64-byte boundary of `buf`; the returned range holds them.
/// Every value is written once, nothing is zeroed first, and `buf`'s memory is reused.
fn phases(x: &[f32], g: &Geom, buf: &mut Vec<f32>, misalign: usize) -> Range<usize> {
    let (np, hw) = (g.planes(), g.hw());
    let len = g.n * g.cin * np * hw;
    let total = len + 16;
    let mut v = std::mem::take(buf);
    v.clear();
    v.reserve(total);
    let start = (misalign + 16 - misalignment(v.as_ptr())) % 16;
    let spare = &mut v.spare_capacity_mut()[..total];
    let (head, rest) = spare.split_at_mut(start);
    let (body, tail) = rest.split_at_mut(len);
    head.fill(MaybeUninit::new(0.0));
    tail.fill(MaybeUninit::new(0.0));
    body.par_chunks_mut(np * hw)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(o, xc)| split_plane(o, xc, g));
    // SAFETY: head, body (split_plane writes every value of a channel's planes) and tail
    unsafe { v.set_len(total) };
    *buf = v;
    start..start + len
}

/// One channel's phase planes from its h × w plane.
fn split_plane(o: &mut [MaybeUninit<f32>], xc: &[f32], g: &Geom) {
    let (np, hw, wo, w) = (g.planes(), g.hw(), g.wo, g.w);
    for (y, row) in xc.chunks_exact(w).enumerate() {
        let (py, r) = (y % 2, y / 2);
        if py * 2 >= np {
            continue; // odd rows: not read by a 1×1 kernel
        }
        // even columns to plane (py, 0), odd ones to (py, 1)
        let (even, rest) = o[(py * 2) * hw + r * wo..].split_at_mut(wo);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[w / 2].write(*last);
        }
        if np == 1 {
            even.iter_mut().zip(pairs).for_each(|(e, p)| {
                e.write(p[0]);
            });
        } else {
            let odd = &mut rest[hw - wo..hw];
            if w % 2 == 1 {
                odd[wo - 1].write(0.0); // column w: padding
            }
            for ((e, d), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                e.write(p[0]);
                d.write(p[1]);
            }
        }
    }
    if np == 4 && g.h % 2 == 1 {
        // the odd-row planes' last row is row h: padding
        for p in [2, 3] {
            o[p * hw + (g.ho - 1) * wo..(p + 1) * hw].fill(MaybeUninit::new(0.0));
        }
    }
}

/// The inverse of [`phases`] for gradients: x positions no plane holds (a 1×1 kernel's odd
/// rows and columns) get 0.
fn unphase(ph: &[f32], g: &Geom) -> Vec<f32> {
    let (np, hw, wo) = (g.planes(), g.hw(), g.wo);
    written_by(g.n * g.cin * g.h * g.w, |out| {
        out.par_chunks_mut(g.h * g.w)
            .zip(ph.par_chunks(np * hw))
            .for_each(|(xc, o)| {
                for (y, row) in xc.chunks_exact_mut(g.w).enumerate() {
                    let (py, r) = (y % 2, y / 2);
                    if py * 2 >= np {
                        row.fill(MaybeUninit::new(0.0));
                        continue;
                    }
                    let even = &o[(py * 2) * hw + r * wo..][..wo];
                    let odd = (np == 4).then(|| &o[(py * 2 + 1) * hw + r * wo..][..wo]);
                    if g.w % 2 == 1 {
                        row[g.w - 1].write(even[g.w / 2]);
                    }
                    let pairs = row.chunks_exact_mut(2);
                    match odd {
                        None => pairs.zip(even).for_each(|(p, e)| {
                            p[0].write(*e);
                            p[1].write(0.0);
                        }),
                        Some(odd) => {
                            for ((p, e), d) in pairs.zip(even).zip(odd) {
                                p[0].write(*e);
                                p[1].write(*d);
                            }
                        }
                    }
                }
            })
    })
}

/// One image's `cin` planes into `xp`'s padded planes (interior only).
fn pad_image(x: &[f32], g: &Geom, xp: &mut [f32]) {
    let (wp, ps) = (g.w + 2, (g.h + 2) * (g.w + 2));
    for (c, plane) in x.chunks_exact(g.h * g.w).enumerate() {
        for (y, row) in plane.chunks_exact(g.w).enumerate() {
            xp[c * ps + (y + 1) * wp + 1..][..g.w].copy_from_slice(row);
        }
    }
}

/// A 64-byte aligned buffer of at least `len` floats, whose values are whatever the last user
/// left: every user writes what it reads.
struct Aligned {
    v: Vec<f32>,
    start: usize,
}

impl Aligned {
    const fn empty() -> Aligned {
        Aligned {
            v: Vec::new(),
            start: 0,
        }
    }
    /// Grows the buffer (zeroed) if it holds fewer than `len` floats.
    fn reserve(&mut self, len: usize) {
        if self.v.len() < self.start + len {
            self.v = vec![0f32; len + 16];
            self.start = (16 - (self.v.as_ptr() as usize / 4) % 16) % 16;
        }
    }
    fn as_ptr(&self) -> *const f32 {
        self.v[self.start..].as_ptr()
    }
    fn as_mut_ptr(&mut self) -> *mut f32 {
        self.v[self.start..].as_mut_ptr()
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// This thread's zero-bordered image copy (see [`with_padded_copy`]).
    static PADDED: std::cell::RefCell<PaddedCopy> = const { std::cell::RefCell::new(((0, 0, 0, 0), Vec::new())) };
    /// This thread's pixel-major copy of dy for the SIMD weight gradients.
    static DY_ROWS: std::cell::RefCell<Aligned> = const { std::cell::RefCell::new(Aligned::empty()) };
}

/// The (channels, planes, rows, columns) a padded copy's border was laid out for, and the copy.
type PaddedCopy = ((usize, usize, usize, usize), Vec<f32>);

/// Runs `f` on this thread's copy buffer for images of `shape` = (channels, planes per channel,
/// rows, columns): blocks of planes of (rows + 2) × (columns + 2) floats whose one-value border
/// is zero, as long as callers write only the interiors. It is kept between images and calls
/// and laid out (zeroed) again only when the shape changes, so the kernels' hot paths neither
/// allocate nor zero. `f` must not start rayon work (it would reenter the buffer).
fn with_padded_copy<R>(shape: (usize, usize, usize, usize), f: impl FnOnce(&mut [f32]) -> R) -> R {
    PADDED.with_borrow_mut(|(key, xp)| {
        if *key != shape {
            let (c, planes, h, w) = shape;
            *key = shape;
            xp.clear();
            xp.resize(c * planes * (h + 2) * (w + 2), 0.0);
        }
        f(xp)
    })
}

/// Runs `f` on this thread's aligned buffer of at least `len` floats (see [`Aligned`]).
fn with_dy_rows<R>(len: usize, f: impl FnOnce(&mut Aligned) -> R) -> R {
    DY_ROWS.with_borrow_mut(|a| {
        a.reserve(len);
        f(a)
    })
}

/// This thread's buffer for phase planes, kept between calls (returned on drop): a fresh
/// 8 MB allocation per call cost page faults that took longer than the split itself.
struct Scratch(Vec<f32>);

impl Scratch {
    fn take() -> Scratch {
        Scratch(SCRATCH.take())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH.set(std::mem::take(&mut self.0));
    }
}

/// The input as the kernels read it, and its channel stride: x itself at stride 1, its phase
/// planes at stride 2 (in `store`, `misalign` floats past a 64-byte boundary).
fn source<'a>(x: &'a [f32], g: &Geom, store: &'a mut Vec<f32>, misalign: usize) -> (&'a [f32], usize) {
    if g.stride == 1 {
        (x, g.h * g.w)
    } else {
        let range = phases(x, g, store, misalign);
        (&store[range], g.planes() * g.hw())
    }
}

/// A buffer of `len` floats that `fill` writes completely, so it is never zeroed first (a
/// pass over 8 MB at batch 128, when the allocator hands back reused memory).
fn written_by(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` initialised all `len` elements (run_job writes every output plane whole)
    unsafe { v.set_len(len) };
    v
}

/// relu?(conv(x, w) + bias + add) with `bias`, `add` (values laid out as the output) and
/// `relu` applied as each value is stored.
fn forward(
    g: &Geom,
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    written_by(g.n * g.cout * g.hw(), |out| {
        forward_into(g, isa, x, w, bias, add, relu, out)
    })
}

/// [`forward`] into `out`, which must hold n·cout·ho·wo values (every one is overwritten).
#[allow(clippy::too_many_arguments)]
fn forward_into(
    g: &Geom,
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let hw = g.hw();
    let mut store = Scratch::take();
    let (src, src_ch) = source(x, g, &mut store.0, 0);
    let padded = padded(isa, g.wo);
    // align the input loads
    let masks = Masks::for_job(padded, g.ho, g.wo, src.as_ptr(), src_ch);
    let taps = g.taps();
    let ktaps: Vec<KTap> = taps.iter().map(|t| ktap(hw, g.wo, t.plane, t.dy, t.dx)).collect();
    let ts: Vec<usize> = taps.iter().map(|t| t.t).collect();
    let ot = out_tile(isa, padded);
    let wp = pack(w, g, &ts, false, ot);
    let job = Job {
        src,
        src_img: g.cin * src_ch,
        src_ch,
        nin: g.cin,
        taps: &ktaps,
        wp: &wp,
        nout: g.cout,
        out_tile: ot,
        out_img: g.cout * hw,
        out_ch: hw,
        ho: g.ho,
        wo: g.wo,
        masks: &masks,
        bias,
        add,
        relu,
        padded,
    };
    run_job(&job, isa, out, g.n);
}

/// dx (+ `add`, values laid out as x): for each input plane, the output gradient convolved with
/// the transposed weights of the taps that read that plane, at negated offsets.
fn input_grad(g: &Geom, isa: Isa, dy: &[f32], w: &[f32], add: Option<&[f32]>) -> Vec<f32> {
    let (hw, np) = (g.hw(), g.planes());
    let padded = padded(isa, g.wo);
    let masks = Masks::for_job(padded, g.ho, g.wo, dy.as_ptr(), hw);
    let ot = out_tile(isa, padded);
    let dsrc = written_by(g.n * g.cin * np * hw, |dsrc| {
        let taps = g.taps();
        for p in 0..np {
            let mine: Vec<&Tap> = taps.iter().filter(|t| t.plane == p).collect();
            if mine.is_empty() {
                // not reached with the kernels supported, but never leave a plane unwritten
                for plane in dsrc.chunks_exact_mut(np * hw) {
                    plane[p * hw..(p + 1) * hw].fill(MaybeUninit::new(0.0));
                }
                continue;
            }
            let ktaps: Vec<KTap> = mine.iter().map(|t| ktap(hw, g.wo, 0, -t.dy, -t.dx)).collect();
            let ts: Vec<usize> = mine.iter().map(|t| t.t).collect();
            let wp = pack(w, g, &ts, true, ot);
            let job = Job {
                src: dy,
                src_img: g.cout * hw,
                src_ch: hw,
                nin: g.cout,
                taps: &ktaps,
                wp: &wp,
                nout: g.cin,
                out_tile: ot,
                out_img: g.cin * np * hw,
                out_ch: np * hw,
                ho: g.ho,
                wo: g.wo,
                masks: &masks,
                bias: None,
                // at stride 1 the output is dx itself; phase planes get it added below
                add: add.filter(|_| g.stride == 1),
                relu: false,
                padded,
            };
            run_job(&job, isa, &mut dsrc[p * hw..], g.n);
        }
    });
    if g.stride == 1 {
        return dsrc;
    }
    let mut dx = unphase(&dsrc, g);
    if let Some(add) = add {
        dx.par_iter_mut().zip(add).for_each(|(d, a)| *d += a);
    }
    dx
}

fn weight_grad(g: &Geom, isa: Isa, x: &[f32], dy: &[f32]) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        if let Some(dw) = winograd::weight_grad(g, x, dy) {
            return dw;
        }
    }
    let hw = g.hw();
    let mut store = Scratch::take();
    let (src, src_ch) = if isa != Isa::Scalar {
        (x, g.h * g.w) // the SIMD kernels read x itself
    } else {
        source(x, g, &mut store.0, 0)
    };
    // in weight-index order, so the result is dW[o][i][t] as Candle lays weights out
    let ktaps: Vec<KTap> = g.taps().iter().map(|t| ktap(hw, g.wo, t.plane, t.dy, t.dx)).collect();
    let job = DwJob {
        src,
        src_img: g.cin * src_ch,
        src_ch,
        nin: g.cin,
        dy,
        dy_img: g.cout * hw,
        dy_ch: hw,
        nout: g.cout,
        taps: &ktaps,
        ho: g.ho,
        wo: g.wo,
    };
    run_dw(g, &job, isa, x, dy)
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str, len: usize) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("conv2d: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(&data[a..b]),
        Some(_) => candle_core::bail!("conv2d: {what} has {:?}, expected {len} elements", l.shape()),
        None => candle_core::bail!("conv2d: {what} must be contiguous"),
    }
}

/// The forward op on (x, w); its backward runs the two gradient ops below.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvOp {
    g: Geom,
    isa: Isa,
}

impl ConvOp {
    /// The output's shape (N, C_out, H', W').
    pub(super) fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.g.n, self.g.cout, self.g.ho, self.g.wo)
    }

    /// The weight's shape (C_out, C_in, k, k).
    pub(super) fn w_dims(&self) -> (usize, usize, usize, usize) {
        (self.g.cout, self.g.cin, self.g.k, self.g.k)
    }

    /// The forward pass on contiguous x and w (lengths checked).
    pub(super) fn forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        if x.len() != self.x_len() || w.len() != self.w_len() {
            candle_core::bail!(
                "conv2d: {} input and {} weight values do not match {:?}",
                x.len(),
                w.len(),
                self.g
            );
        }
        Ok(forward(&self.g, self.isa, x, w, None, None, false))
    }

    fn x_len(&self) -> usize {
        self.g.n * self.g.cin * self.g.h * self.g.w
    }
    fn w_len(&self) -> usize {
        self.g.cout * self.g.cin * self.g.k * self.g.k
    }
    fn y_len(&self) -> usize {
        self.g.n * self.g.cout * self.g.hw()
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, "input", self.x_len())?;
        let w = contiguous(s2, l2, "weight", self.w_len())?;
        let g = &self.g;
        let y = forward(g, self.isa, x, w, None, None, false);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // the network's first convolution reads the data batch, which needs no gradient
        let dx = match x.track_op() {
            true => Some(dy.apply_op2_no_bwd(w, &InputGradOp(*self))?),
            false => None,
        };
        let dw = x.apply_op2_no_bwd(&dy, &WeightGradOp(*self))?;
        Ok((dx, Some(dw)))
    }
}

/// (x, w) → relu?(conv(x, w) + bias), or (x, w, s) → relu?(conv(x, w) + bias + s); forward
/// only.
struct BiasConvOp {
    conv: ConvOp,
    bias: Vec<f32>,
    relu: bool,
}

impl BiasConvOp {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        add: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.conv;
        let x = contiguous(s1, l1, "input", op.x_len())?;
        let w = contiguous(s2, l2, "weight", op.w_len())?;
        let g = &op.g;
        let y = forward(g, op.isa, x, w, Some(&self.bias), add, self.relu);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }
}

impl CustomOp2 for BiasConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }
}

impl CustomOp3 for BiasConvOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let add = contiguous(s3, l3, "added values", self.conv.y_len())?;
        self.run(s1, l1, s2, l2, Some(add))
    }
}

/// (dy, w) → dx, or (dy, w, s) → dx + s.
pub(super) struct InputGradOp(pub(super) ConvOp);

impl InputGradOp {
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        add: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let dy = contiguous(s1, l1, "output gradient", op.y_len())?;
        let w = contiguous(s2, l2, "weight", op.w_len())?;
        let g = &op.g;
        let dx = input_grad(g, op.isa, dy, w, add);
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.cin, g.h, g.w))))
    }
}

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s1, l1, s2, l2, None)
    }
}

impl CustomOp3 for InputGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-input-grad-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let add = contiguous(s3, l3, "added gradient", self.0.x_len())?;
        self.run(s1, l1, s2, l2, Some(add))
    }
}

/// (x, dy) → dw.
pub(super) struct WeightGradOp(pub(super) ConvOp);

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "conv2d-fast-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let x = contiguous(s1, l1, "input", op.x_len())?;
        let dy = contiguous(s2, l2, "output gradient", op.y_len())?;
        let g = &op.g;
        let dw = weight_grad(g, op.isa, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from((g.cout, g.cin, g.k, g.k))))
    }
}
