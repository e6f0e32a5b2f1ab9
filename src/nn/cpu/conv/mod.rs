//! Fast CPU 2-D convolution on plain slices: the forward pass ([`forward`]), the input gradient
//! ([`input_grad`]) and the weight gradient ([`weight_grad`]) for the shapes CIFAR ResNets are
//! made of (3×3 padding 1 and 1×1 padding 0, stride 1 or 2, f32). `ops::conv` wraps them in
//! Candle ops; nothing here knows Candle.
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
//! and a zero-bordered copy of x (`dw`, for `avx512::dw_images` and `avx2::dw_images`). Either way
//! runs of a fixed number of images are summed in parallel and their partial sums added in run
//! order, so results do not depend on the thread count.
//!
//! The work is split over images (and output-channel tiles) with rayon, finely enough that a
//! thread the host slows down hands work to the others. Kernels exist for AVX-512 (F + VL),
//! AVX2 + FMA and plain Rust, picked at run time; the tests force each one the machine has.
//! Layout: activations (N, C, H, W) and weights (out, in, k, k) as PyTorch has them; weights
//! are repacked per call (tiny), stride-2 inputs are split into phase planes per call (one
//! pass over x).
//!
//! Where things are: this file runs a pass (its entry points and the parallel split of a job);
//! [`plan`] picks the kernel of each pass; [`geom`] holds the shape, taps and lane masks;
//! [`job`] what a kernel is asked to do; [`phases`] the stride-2 phase planes; [`scratch`] the
//! reused buffers; `scalar`, `masked` and `dw` (the lane-masked forward tile and the weight
//! gradient over output-channel vectors, each written once over `simd`'s vector primitives,
//! which `avx2` and `avx512` implement), `avx2`'s padded kernel and `winograd` the kernels.
//! Each imports only from the files below it (geom, job, phases, scratch, plan, simd), never
//! from this one.

mod avx2;
mod avx512;
#[cfg(target_arch = "x86_64")]
mod dw;
pub mod geom;
pub mod job;
#[cfg(target_arch = "x86_64")]
mod masked;
pub mod phases;
pub mod plan;
mod scalar;
pub mod scratch;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(target_arch = "x86_64")]
mod winograd;

use std::mem::MaybeUninit;

use rayon::prelude::*;

pub use geom::ConvGeom;
use geom::{ktap, KTap, Masks, Tap};
use job::{add_in_order, images_per_run, pack, DwJob, Job};
use phases::{source, unphase};
pub use plan::{ConvPlan, DwKernel, FwdKernel, Isa};
use scratch::{misalignment, written_by, Scratch};

/// relu?(conv(x, w) + bias + add) with `bias`, `add` (values laid out as the output) and
/// `relu` applied as each value is stored.
pub fn forward(
    g: &ConvGeom,
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
    g: &ConvGeom,
    isa: Isa,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let hw = g.hw();
    let kernel = ConvPlan::for_this_thread(g, isa).forward;
    let mut store = Scratch::take();
    let (src, src_ch) = source(x, g, &mut store.0, 0);
    // align the input loads
    let masks = masks(kernel, g.ho, g.wo, src.as_ptr(), src_ch);
    let taps = g.taps();
    let ktaps: Vec<KTap> = taps.iter().map(|t| ktap(hw, g.wo, t.plane, t.dy, t.dx)).collect();
    let ts: Vec<usize> = taps.iter().map(|t| t.t).collect();
    let ot = kernel.out_tile();
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
    };
    run_job(&job, kernel, out, g.n);
}

/// dx (+ `add`, values laid out as x): for each input plane, the output gradient convolved with
/// the transposed weights of the taps that read that plane, at negated offsets.
pub fn input_grad(g: &ConvGeom, isa: Isa, dy: &[f32], w: &[f32], add: Option<&[f32]>) -> Vec<f32> {
    let (hw, np) = (g.hw(), g.planes());
    let kernel = ConvPlan::for_this_thread(g, isa).input_grad;
    let masks = masks(kernel, g.ho, g.wo, dy.as_ptr(), hw);
    let ot = kernel.out_tile();
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
            };
            run_job(&job, kernel, &mut dsrc[p * hw..], g.n);
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

/// dW[o][i][ky][kx], summed over every image.
pub fn weight_grad(g: &ConvGeom, isa: Isa, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let kernel = ConvPlan::for_this_thread(g, isa).weight_grad;
    #[cfg(target_arch = "x86_64")]
    if kernel == DwKernel::Winograd {
        if let Some(dw) = winograd::weight_grad(g, x, dy) {
            return dw;
        }
    }
    // Winograd's falls back to the kernel over output-channel vectors
    let kernel = match kernel {
        DwKernel::Winograd => DwKernel::Channels(isa),
        k => k,
    };
    let hw = g.hw();
    let mut store = Scratch::take();
    let (src, src_ch) = if kernel != DwKernel::Taps {
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
    run_dw(g, &job, kernel, x, dy)
}

/// The lane masks a forward-style job's kernel reads: none on zero-bordered copies, else masks
/// whose grid aligns the vectors of planes starting at `p` every `stride` floats (no shift when
/// the planes' alignments differ).
fn masks(kernel: FwdKernel, ho: usize, wo: usize, p: *const f32, stride: usize) -> Masks {
    if kernel.padded() {
        return Masks::none();
    }
    let shift = if stride.is_multiple_of(16) { misalignment(p) } else { 0 };
    Masks::new(ho, wo, shift)
}

/// A pointer the threads of one job write through, each to its own disjoint part.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Runs a [`Job`] with `kernel` over (image, output tile) units in parallel; `out` has room
/// for every image. Every value of every output plane is written, so `out` need not be
/// initialised.
fn run_job(job: &Job, kernel: FwdKernel, out: &mut [MaybeUninit<f32>], n: usize) {
    let tiles = job.nout.div_ceil(job.out_tile);
    let need = if n == 0 {
        0
    } else {
        (n - 1) * job.out_img + (job.nout - 1) * job.out_ch + job.ho * job.wo
    };
    assert!(out.len() >= need, "conv: output buffer too small");
    assert!(job.add.is_none_or(|a| a.len() >= need), "conv: too few values to add");
    let ptr = OutPtr(out.as_mut_ptr().cast::<f32>());
    let isa = match kernel {
        #[cfg(target_arch = "x86_64")]
        FwdKernel::Padded | FwdKernel::Winograd => {
            run_padded(job, kernel, ptr, n);
            return;
        }
        FwdKernel::Masked(isa) => isa,
        #[cfg(not(target_arch = "x86_64"))]
        _ => Isa::Scalar,
    };
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

/// [`run_job`] for the kernels that read a zero-bordered copy of each image: the padded AVX2
/// kernel, or Winograd's where its plan fits the job.
#[cfg(target_arch = "x86_64")]
fn run_padded(job: &Job, kernel: FwdKernel, ptr: OutPtr, n: usize) {
    let tiles = job.nout.div_ceil(job.out_tile);
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
    let wino = match kernel {
        FwdKernel::Winograd => winograd::WinoJob::new(job),
        _ => None,
    };
    (0..n).into_par_iter().for_each(|img| {
        scratch::with_padded_copy((job.nin, planes, job.ho, job.wo), |xp| {
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
            // SAFETY: units write disjoint (image, channel) planes, all inside `out` (checked
            // by run_job); each image's planes are written by this unit alone
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
}

/// The weight gradient summed over all images: partial sums over runs of [`images_per_run`]
/// images, computed in parallel (more runs than threads, so that a thread the host slows down
/// hands runs to the others) and added in run order, so the result does not depend on the
/// thread count.
fn run_dw(g: &ConvGeom, job: &DwJob, kernel: DwKernel, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let n = g.n;
    let kk = job.taps.len();
    // the SIMD kernels' partial sums are [out vector][in][tap][lane]
    let lanes = kernel.lanes();
    let len = job.nout.next_multiple_of(lanes) * job.nin * kk;
    let per = images_per_run(g.hw());
    let chunks = n.div_ceil(per).max(1);
    let bounds = |c: usize| (c * per, ((c + 1) * per).min(n));
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let (a, b) = bounds(c);
            match kernel {
                // SAFETY: x and dy hold every image (the op checked their lengths); the plan
                // picked an instruction set the CPU has
                #[cfg(target_arch = "x86_64")]
                DwKernel::Channels(Isa::Avx512) => unsafe { avx512::dw_images(g, x, dy, a..b) },
                #[cfg(target_arch = "x86_64")]
                DwKernel::Channels(Isa::Avx2) => unsafe { avx2::dw_images(g, x, dy, a..b) },
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
