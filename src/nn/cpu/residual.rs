//! The residual addition on plain slices: `out = relu?(branch + S(x))` ([`forward`]) and its
//! gradients ([`backward`]), with the shortcut `S` the identity or He et al.'s option A
//! ([`Addend`]), over inputs of a [`ResidualShape`]. `ops::residual` wraps them in Candle ops
//! (and has the CUDA kernels); nothing here knows Candle.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::lanes;

/// What is added to the branch: `x` as it is, or `x` as option A fits it to the branch (a
/// unit's [`Shortcut`](crate::nn::Shortcut) says which; a projection's output is added as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addend {
    /// `x` has the branch's shape and is added as it is.
    Identity,
    /// Option A: `x[:, :, ::2, ::2]`, zero-padded to the branch's channel count.
    SubsamplePad,
}

/// The shapes of a residual addition: branch (n, c_out, h_out, w_out), x (n, c_in, h, w).
#[derive(Debug, Clone, Copy)]
pub struct ResidualShape {
    pub n: usize,
    pub c_out: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
}

impl ResidualShape {
    /// One image of the branch / output.
    pub fn out_image(&self) -> usize {
        self.c_out * self.h_out * self.w_out
    }
    pub fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }
    /// The length of the d_x part of [`backward`]'s buffer: none for the identity, whose d_x is
    /// d_branch itself.
    pub fn d_x_len(&self, shortcut: Addend) -> usize {
        match shortcut {
            Addend::Identity => 0,
            Addend::SubsamplePad => self.n * self.in_image(),
        }
    }
    /// Option A within one image: calls `f(out index, x index)` for every output element that
    /// x feeds (channel c + before, row r, column j ← channel c, row 2r, column 2j); the
    /// zero-padded channels are never visited.
    fn option_a(&self, mut f: impl FnMut(usize, usize)) {
        let before = (self.c_out - self.c_in) / 2;
        let plane = self.h_out * self.w_out;
        for c in 0..self.c_in {
            for r in 0..self.h_out {
                let o_row = (c + before) * plane + r * self.w_out;
                let x_row = c * self.h * self.w + 2 * r * self.w;
                for j in 0..self.w_out {
                    f(o_row + j, x_row + 2 * j);
                }
            }
        }
    }
}

/// Each thread gets at least this many output elements: below it, threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 15;

/// How many images one thread should take at least.
fn min_images(image_len: usize) -> usize {
    (PARALLEL_MIN / image_len.max(1)).max(1)
}

/// out = relu?(b + S(x)) for branch values `b` and shortcut input `x` of shape `g`.
pub fn forward(g: ResidualShape, shortcut: Addend, relu: bool, b: &[f32], x: &[f32]) -> Vec<f32> {
    let (ol, il) = (g.out_image(), g.in_image());
    let mut out: Vec<f32> = Vec::with_capacity(g.n * ol);
    out.spare_capacity_mut()[..g.n * ol]
        .par_chunks_mut(ol)
        .with_min_len(min_images(ol))
        .enumerate()
        .for_each(|(i, o)| {
            let (bi, xi) = (&b[i * ol..(i + 1) * ol], &x[i * il..(i + 1) * il]);
            match shortcut {
                Addend::Identity => lanes::sum_relu(o, bi, xi, relu),
                Addend::SubsamplePad => {
                    for (o, &v) in o.iter_mut().zip(bi) {
                        o.write(v);
                    }
                    // SAFETY: every value of o has just been written
                    let o: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast(), o.len()) };
                    g.option_a(|oi, xj| o[oi] += xi[xj]);
                    if relu {
                        o.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                }
            }
        });
    // SAFETY: the images' chunks cover the whole output and each was written in full
    unsafe { out.set_len(g.n * ol) };
    out
}

/// The gradients of [`forward`] from (grad, out), one pass, as one buffer [d_branch | d_x]:
/// d_branch = grad · [out > 0] (or grad without ReLU); for option A d_x is d_branch's
/// x-channels scattered to the even positions, zero elsewhere. For the identity d_x is
/// d_branch itself, so the buffer holds d_branch alone.
pub fn backward(g: ResidualShape, shortcut: Addend, relu: bool, grad: &[f32], out: &[f32]) -> Vec<f32> {
    let (ol, il) = (g.out_image(), g.in_image());
    let nb = g.n * ol;
    let len = nb + g.d_x_len(shortcut);
    let mut buf: Vec<f32> = Vec::with_capacity(len);
    let (d_branch, d_x) = buf.spare_capacity_mut()[..len].split_at_mut(nb);
    // d_x is written only where x feeds the output (option A): zero it first.
    d_x.fill(MaybeUninit::new(0.0));
    let mask = |i: usize, db: &mut [MaybeUninit<f32>]| {
        let (gi, oi) = (&grad[i * ol..(i + 1) * ol], &out[i * ol..(i + 1) * ol]);
        if relu {
            lanes::relu_grad(db, gi, oi);
        } else {
            for (d, &g) in db.iter_mut().zip(gi) {
                d.write(g);
            }
        }
    };
    match shortcut {
        Addend::Identity => d_branch
            .par_chunks_mut(ol)
            .with_min_len(min_images(ol))
            .enumerate()
            .for_each(|(i, db)| mask(i, db)),
        Addend::SubsamplePad => d_branch
            .par_chunks_mut(ol)
            .zip(d_x.par_chunks_mut(il.max(1)))
            .with_min_len(min_images(ol))
            .enumerate()
            .for_each(|(i, (db, dx))| {
                mask(i, db);
                // SAFETY: mask(i, db) has just written every value of db
                let db: &[f32] = unsafe { std::slice::from_raw_parts(db.as_ptr().cast(), db.len()) };
                g.option_a(|oi, xj| {
                    dx[xj].write(db[oi]);
                });
            }),
    }
    // SAFETY: every value of d_branch was written by `mask`, and d_x was zero-filled
    unsafe { buf.set_len(len) };
    buf
}
